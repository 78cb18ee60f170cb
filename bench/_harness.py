"""What every benchmark shares: the machine, timing, CPU and memory of a process tree, output
comparison, and result files (`bench/results/NAME.json`, rendered by `python -m bench.report`).

A benchmark module does, in `main(argv=None)`:

    run = start_run("exact", argv, args.result, summary, vars(args))  # prints the machine, notes the load
    ...                                                    # the measurements, ours vs a peer or baseline
    run.table("throughput", ["method", "seconds"], rows)   # recorded and printed
    run.compare("curate / polars, rows/s", ratio)
    run.check("same kept rows", ours == theirs)
    run.write()                                            # bench/results/exact.json

curate is imported inside the functions that need it, so this module (and `bench.report`)
imports without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"

# CPU features that move our figures: SIMD width for hashing and distances, int8/bf16 dot
# products for quantized embedding models.
FLAGS_OF_INTEREST = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)
GIB = 1024**3


# ---------------------------------------------------------------------------------------
# The machine.


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    info = _cpuinfo()
    return (
        info.get("model name")
        or info.get("Model")
        or info.get("Hardware")
        or platform.processor()
        or platform.machine()
        or "unknown CPU"
    )


def cpu_flags() -> list[str]:
    """The flags of FLAGS_OF_INTEREST this CPU has, in that order."""
    info = _cpuinfo()
    present = set((info.get("flags") or info.get("Features") or "").split())
    return [flag for flag in FLAGS_OF_INTEREST if flag in present]


def memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def pinned_to_one_core(pin: bool = True):
    """Run the block on this process's first allowed core (its affinity mask, which curate reads
    as its core count): a one-core baseline, since --jobs 1 on C cores still runs C threads.

    Every thread of the process is pinned, not only the calling one: on Linux an affinity is
    per thread, and the thread pools an earlier run left behind (pyarrow's, jemalloc's) kept
    both cores, so a "one core" run after another run decoded Parquet on two (measured: 4
    of 9 threads still on cores 0-1). Threads started inside the block inherit the pin."""
    allowed = os.sched_getaffinity(0)
    if not pin:
        yield
        return
    threads = _thread_ids()
    for tid in threads:
        _set_affinity(tid, {min(allowed)})
    try:
        yield
    finally:
        for tid in _thread_ids() | threads:
            _set_affinity(tid, allowed)


def _thread_ids() -> set[int]:
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:  # no /proc: the calling thread only
        return {0}


def _set_affinity(tid: int, cores: set[int]) -> None:
    try:
        os.sched_setaffinity(tid, cores)
    except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
        pass


def machine() -> dict:
    memory = memory_bytes()
    return {
        "cpu": cpu_model(),
        "flags": cpu_flags(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "memory_gib": round(memory / GIB, 1) if memory else None,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
    }


def machine_line(info: dict | None = None) -> str:
    """`CPU model, N cores (flags), M GiB`: what goes beside a figure."""
    info = info or machine()
    cores = f"{info['cores']} cores" + (
        f" ({info['usable_cores']} usable)" if info.get("usable_cores") not in (None, info["cores"]) else ""
    )
    flags = [f for f in info.get("flags") or [] if not f.startswith("amx_")]
    amx = [f.removeprefix("amx_") for f in info.get("flags") or [] if f.startswith("amx_")]
    flags = ", ".join(flags + ([f"amx ({'/'.join(amx)})"] if amx else [])) or "none of " + "/".join(
        FLAGS_OF_INTEREST[:3]
    )
    memory = f", {info['memory_gib']:g} GiB RAM" if info.get("memory_gib") else ""
    return f"{info['cpu']}, {cores}, flags {flags}{memory}"


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available
        return []


# ---------------------------------------------------------------------------------------
# Time.


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(least wall seconds, result of that call) over `repeats` calls: on a shared machine the
    fastest run is the one the least disturbed."""
    best: tuple[float, Any] | None = None
    for _ in range(max(1, repeats)):
        seconds, result = timed(fn)
        if best is None or seconds < best[0]:
            best = (seconds, result)
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------
# CPU and memory of a process tree.


class ProcessTree:
    """CPU seconds and RSS of a process and every process under it while a `with` block runs,
    sampled every `interval` s on a thread (psutil).

    Worker processes of a run live under a fork server or a Dask nanny, not as children this
    process waits for, so getrusage(RUSAGE_CHILDREN) misses them. A descendant's last slice
    before it exits is missed, so CPU is a slight undercount. Processes present at the start
    (a fork server left by an earlier run) count by their growth only.

    pid: the root (default: this process, whose own CPU is then exact and excludes the
    sampling thread). After the block:
      cpu_seconds             root and descendants
      descendant_cpu_seconds  descendants only
      peak_rss                peak of the summed RSS of the tree (bytes)
      peak_rss_by_process     per descendant {(pid, create time): (its command line, peak RSS)}
      parent                  per descendant {(pid, create time): parent pid}
    """

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid = os.getpid() if pid is None else pid
        self.own = self.pid == os.getpid()
        self.interval = interval
        self.cpu_seconds = self.descendant_cpu_seconds = 0.0
        self.peak_rss = 0
        self.peak_rss_by_process: dict[tuple[int, float], tuple[str, int]] = {}
        self.parent: dict[tuple[int, float], int] = {}
        self._cpu: dict[tuple[int, float], float] = {}
        self._before: dict[tuple[int, float], float] = {}
        self._root_key: tuple[int, float] | None = None
        self._sampler_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[tuple[int, float], float]:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return {}
        found: dict[tuple[int, float], float] = {}
        total = 0
        for proc in procs:
            try:
                key = (proc.pid, proc.create_time())
                times, rss = proc.cpu_times(), proc.memory_info().rss
            except psutil.Error:
                continue
            if proc.pid == self.pid:
                self._root_key = key
            found[key] = times.user + times.system
            total += rss
            if proc.pid != self.pid and rss > self.peak_rss_by_process.get(key, ("", 0))[1]:
                try:
                    command = " ".join(proc.cmdline())
                except psutil.Error:
                    command = ""
                self.peak_rss_by_process[key] = (command, rss)
                self.parent[key] = proc.ppid()
        self.peak_rss = max(self.peak_rss, total)
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._cpu.update(self._sample())
        self._sampler_cpu = time.thread_time()  # this thread's own CPU, not the run's

    def __enter__(self) -> ProcessTree:
        self._before = self._sample()
        self._cpu.update(self._before)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cpu.update(self._sample())
        self._stop.set()
        self._thread.join()
        grown = {key: cpu - self._before.get(key, 0.0) for key, cpu in self._cpu.items()}
        root = grown.pop(self._root_key, 0.0) if self._root_key else 0.0
        if self.own:
            root -= self._sampler_cpu
        self.descendant_cpu_seconds = sum(grown.values())
        self.cpu_seconds = root + self.descendant_cpu_seconds


def own_peak_rss() -> int:
    """Peak RSS of this process in bytes (getrusage; Linux reports KiB)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value / GIB:.2f} GiB"


# ---------------------------------------------------------------------------------------
# curate as a user runs it, and its outputs.


def curate_cli(*args: str) -> list[str]:
    """The command line of `curate ARGS` from this checkout, in a fresh interpreter."""
    return [sys.executable, "-m", "curate.cli", *args]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `curate_cli`: this checkout's curate first on the path."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


def part_table(directory: str | os.PathLike, columns: Sequence[str] | None = None):
    """All part files of an output directory (kept/, removed/, embeddings/) as one Arrow table."""
    from curate.io.parts import read_parts

    return read_parts(directory, columns=columns)


def kept_ids(out: str | os.PathLike) -> list[str]:
    """Kept ids of a finished output, in output order, as strings."""
    from curate.output.ledger import ids_as_strings

    table = part_table(Path(out) / "kept", columns=["id"])
    return ids_as_strings(table.column("id")).to_pylist() if table.num_rows else []


def removed_ids(out: str | os.PathLike) -> set[str]:
    """Ids in the output's ledger (removed/), as strings."""
    from curate.io.parts import iter_part_batches
    from curate.output.ledger import ids_as_strings

    found: set[str] = set()
    for batch in iter_part_batches(Path(out) / "removed", columns=["id"]):
        found.update(ids_as_strings(batch.column("id")).to_pylist())
    return found


LEDGER_COLUMNS = ("id", "stage", "reason", "duplicate_of")


def output_signature(
    out: str | os.PathLike, kept: Sequence[str] = ("id",), removed: Sequence[str] = LEDGER_COLUMNS
) -> tuple:
    """What two runs of one pipeline must agree on: the kept rows' `kept` columns in order and
    the ledger's `removed` columns (either may be empty to skip it)."""
    out = Path(out)
    kept_rows = part_table(out / "kept", columns=list(kept)).to_pylist() if kept else []
    removed_rows = part_table(out / "removed", columns=list(removed)).to_pylist() if removed else []
    return kept_rows, removed_rows


def same_outputs(
    outs: Iterable[str | os.PathLike], kept: Sequence[str] = ("id",), removed: Sequence[str] = LEDGER_COLUMNS
) -> bool:
    """Every output has the first one's signature (kept ids in order, ledger)."""
    outs = list(outs)
    reference = output_signature(outs[0], kept, removed)
    return all(output_signature(out, kept, removed) == reference for out in outs[1:])


def importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------
# Tables and result files.


def format_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table with padded columns (readable in a terminal too)."""
    cells = [[_cell(v) for v in columns], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def portable(value: Any) -> Any:
    """`value` made JSON-safe and free of this machine's paths: a path inside the checkout
    becomes relative to it, any other path its file name; numpy scalars become Python numbers,
    non-finite floats null."""
    if isinstance(value, dict):
        return {str(k): portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [portable(v) for v in items]
    if isinstance(value, Path):
        try:
            return value.resolve().relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return value.name
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return portable(value.item())  # numpy scalar
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def write_result(
    name: str,
    payload: dict,
    *,
    command: str | None = None,
    started: float | None = None,
    load_start: Sequence[float] | None = None,
) -> Path:
    """Write `bench/results/NAME.json` atomically: the machine, the command line, a UTC
    timestamp, the load average at the start and end (recorded, not a figure), and `payload`
    (the figures: params, tables, comparisons, checks, data)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": command or "python -m bench." + name + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "seconds": round(time.perf_counter() - started, 1) if started is not None else None,
        "machine": machine(),
        "load_average": {"start": list(load_start or []), "end": load_average()},
        **portable(payload),
    }
    target = RESULTS_DIR / f"{name}.json"
    handle, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".json.tmp", dir=RESULTS_DIR)
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(document, out, indent=1, allow_nan=False)
            out.write("\n")
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def add_result_argument(parser: argparse.ArgumentParser, default: str | None, shown: str | None = None) -> None:
    """`--result NAME`: the result file's name (`shown` describes a default chosen later)."""
    parser.add_argument(
        "--result",
        default=default,
        metavar="NAME",
        help=f"write the figures to bench/results/NAME.json (default: {shown or default}); '-': write no file",
    )


class Run:
    """One benchmark run: collects its figures, prints them as it goes, writes the result file."""

    def __init__(self, module: str, argv: Sequence[str] | None = None, result: str | None = None, summary: str = ""):
        self.module = module
        self.result = module if result is None else result
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.command = f"python -m bench.{module}" + "".join(" " + shlex.quote(a) for a in self.argv)
        self.summary = summary
        self.started = time.perf_counter()
        self.load_start = load_average()
        self.params: dict[str, Any] = {}
        self.tables: list[dict] = []
        self.comparisons: list[dict] = []
        self.checks: list[dict] = []
        self.notes: list[str] = []
        self.data: dict[str, Any] = {}

    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], show: bool = True) -> None:
        rows = [list(r) for r in rows]
        self.tables.append({"title": title, "columns": list(columns), "rows": rows})
        if show:
            print(f"\n{title}\n{format_table(columns, rows)}", flush=True)

    def compare(self, label: str, value: float | None, unit: str = "x", target: str | None = None) -> None:
        """One figure measured in this run against a peer or a baseline (a ratio, a share, ...)."""
        self.comparisons.append(
            {"label": label, "value": value, "unit": unit, **({"target": target} if target else {})}
        )
        shown = (
            "n/a"
            if value is None or not math.isfinite(value)
            else (f"{value:.0%}" if unit == "%" else f"{value:.3g}{unit}")
        )
        print(f"{label}: {shown}" + (f" (target {target})" if target else ""), flush=True)

    def check(self, label: str, ok: bool) -> bool:
        self.checks.append({"label": label, "ok": bool(ok)})
        print(f"{label}: {'yes' if ok else 'NO'}", flush=True)
        return bool(ok)

    def note(self, text: str, show: bool = True) -> None:
        self.notes.append(text)
        if show:
            print(f"note: {text}", flush=True)

    def payload(self) -> dict:
        return {
            "module": self.module,
            "summary": self.summary,
            "params": self.params,
            "tables": self.tables,
            "comparisons": self.comparisons,
            "checks": self.checks,
            "notes": self.notes,
            "data": self.data,
        }

    def write(self, complete: bool = True) -> Path | None:
        """The result file (None with `--result -`); `complete=False` for a checkpoint mid-run."""
        if self.result == "-":
            return None
        path = write_result(
            self.result,
            {**self.payload(), "complete": complete},
            command=self.command,
            started=self.started,
            load_start=self.load_start,
        )
        if complete:
            print(
                f"\nload average at the end: {' '.join(f'{x:.2f}' for x in load_average())}; result: {path.relative_to(REPO_ROOT)} "
                "(python -m bench.report renders bench/RESULTS.md)",
                flush=True,
            )
        return path


def start_run(
    module: str,
    argv: Sequence[str] | None = None,
    result: str | None = None,
    summary: str = "",
    params: dict | None = None,
) -> Run:
    """Begin a run: print the machine and the load average, record both."""
    run = Run(module, argv, result, summary)
    if params:
        run.params.update({k: v for k, v in params.items() if k != "result"})
    print(f"machine: {machine_line()}; load average {' '.join(f'{x:.2f}' for x in run.load_start)}", flush=True)
    return run
