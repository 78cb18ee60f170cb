"""Repetition-aware scaling laws for quality pools: the law, its fit, and compute-aware allocation."""

from __future__ import annotations

import json
from pathlib import Path

from curate.errors import InputError
from curate.scaling.law import Law, law_from_json, law_to_json


def load_law(path: str | Path) -> Law:
    """Read LAW.json, or fail with one line naming the file (exit 2)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return law_from_json(data)
    except FileNotFoundError:
        raise InputError(
            "law file does not exist", path=path, fix="fit one first: curate fit RUNS.csv -o LAW.json"
        ) from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(
            f"not a valid LAW.json ({type(exc).__name__}: {exc})", path=path, fix="write it with curate fit"
        ) from None


def save_json(path: str | Path, data: dict) -> None:
    from curate.io.atomic import atomic_write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)


def save_law(path: str | Path, law: Law) -> None:
    save_json(path, law_to_json(law))
