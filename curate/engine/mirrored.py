"""An executor whose tasks run with the run's store mirror active: for Dask workers that share no
disk with the driver. Each task hands back what it uploaded, and the driver merges it into the
run's record (curate.io.mirror); the executor itself knows nothing of stores."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from curate.io import mirror


class MirroredExecutor:
    def __init__(self, executor: Any, run_mirror: mirror.Mirror):
        self.executor = executor
        self.mirror = run_mirror

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], **options: Any) -> list[Any]:
        results = self.executor.map(mirror.InMirror(fn, self.mirror), items, **options)
        for _, uploaded in results:
            mirror.merge(uploaded)
        return [result for result, _ in results]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)
