"""The package's shape: no import circle (function-level imports counted), few modules at the
top, and lower layers that never import higher ones."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "curate"

# Who may import whom, by top-level package of curate. A package missing here may import any
# package not above it in this table.
MAY_IMPORT = {
    "io": {"errors", "runtime", "io"},
    "algorithms": {"errors", "runtime", "io", "algorithms"},
    "output": {"__init__", "errors", "runtime", "io", "output"},
}
# Imported only by what sits above them.
ONLY_FROM = {
    "cli": set(),
    "commands": {"cli", "commands"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """Every `import` and `from ... import` in curate/, at any depth of a module (functions too)."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(paths)
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".") if is_package else name.split(".")[:-1]
                    parent = parent[: len(parent) - (node.level - 1)]
                    base = ".".join([*parent, base] if base else parent)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            for target in targets:
                while target not in paths and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in paths and target != name:
                    graph.add_edge(name, target)
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_import_graph_sees_function_level_imports():
    graph = import_graph()
    # curate.report.build imports matplotlib-backed plots lazily; curate.cli imports commands in functions
    assert graph.has_edge("curate.cli", "curate.commands.evaluate"), "function-level imports must count"


def test_no_import_circle():
    cycles = [sorted(c) for c in nx.strongly_connected_components(import_graph()) if len(c) > 1]
    assert not cycles, f"import circles: {cycles}"


def test_few_modules_at_the_top_of_the_package():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 7, modules


def test_lower_layers_never_import_higher_ones():
    wrong = []
    for a, b in import_graph().edges:
        here, there = top(a), top(b)
        if here == there:
            continue
        if here in MAY_IMPORT and there not in MAY_IMPORT[here]:
            wrong.append(f"{a} -> {b}")
        if there in ONLY_FROM and here not in ONLY_FROM[there]:
            wrong.append(f"{a} -> {b}")
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_writes_and_models_know_nothing_of_the_layers_above():
    graph = import_graph()
    assert not graph.has_edge("curate.io.atomic", "curate.io.mirror"), (
        "the mirror registers a hook; atomic writes do not call it"
    )
    assert not graph.has_edge("curate.io.storage", "curate.io.mirror")
    engine_or_report = [
        b for a, b in graph.edges if top(a) == "embeddings" and top(b) in {"engine", "report", "commands"}
    ]
    assert not engine_or_report, engine_or_report
    reports = [b for a, b in graph.edges if top(a) == "engine" and top(b) == "report" and b != "curate.report.config"]
    assert not reports, f"the engine builds no report (curate.pipeline passes the builder): {reports}"


def test_no_run_state_in_module_globals():
    """The mirror and the earlier-output origin live in context variables, not module dicts."""
    from curate.index import origin
    from curate.io import mirror

    for module in (mirror, origin):
        state = [
            n
            for n, v in vars(module).items()
            if n.isupper() and isinstance(v, (dict, list, set)) and not n.startswith("__")
        ]
        assert not state, f"{module.__name__} keeps run state in {state}"


def test_two_runs_in_one_process_keep_their_own_mirror(tmp_path):
    """Runs in two threads (a notebook, a service) each see only their own staging mirror."""
    import threading

    from curate.io import mirror

    barrier = threading.Barrier(2)
    seen: dict[str, tuple] = {}

    def run(name: str, other: str) -> None:
        with mirror.activated(mirror.Mirror(str(tmp_path / name), f"s3://bucket/{name}")):
            barrier.wait()  # both mirrors active at once
            seen[name] = (
                mirror.relative(tmp_path / name / "kept"),
                mirror.relative(tmp_path / other / "kept"),
                mirror.active().url,
            )
            barrier.wait()

    threads = [threading.Thread(target=run, args=pair) for pair in (("a", "b"), ("b", "a"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"a": ("kept", None, "s3://bucket/a"), "b": ("kept", None, "s3://bucket/b")}
    assert mirror.active() is None, "nothing leaks into the caller"
