"""`curate decontaminate`: the command-line form of the decontaminate stage's evaluation sets."""

from __future__ import annotations

from curate.errors import UsageError


def eval_set_tables(pairs: list[str], text_columns: list[str] | None, id_column: str | None) -> list[dict]:
    """--eval NAME=PATH pairs as the stage's `eval_sets` tables; one line and exit 2 for a bad pair."""
    tables = []
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UsageError(f"--eval {pair!r} is not NAME=PATH", fix="e.g. --eval gsm8k=evals/gsm8k.jsonl")
        table: dict = {"name": name.strip(), "path": path.strip()}
        if text_columns:
            table["text_columns"] = list(text_columns)
        if id_column:
            table["id_column"] = id_column
        tables.append(table)
    return tables
