"""Progress bars that vanish when quiet or when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Protocol


class Task(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


class _RichTask:
    def __init__(self, progress, task_id):
        self._progress = progress
        self._task_id = task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task_id, n)


class Progress:
    """Factory for per-pass progress tasks; `enabled=None` means: only on a TTY."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    @contextmanager
    def task(self, description: str, total: int | None = None, unit: str = "rows") -> Iterator[Task]:
        if not self.enabled:
            yield _NullTask()
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        ]
        with RichProgress(*columns, console=Console(stderr=True), transient=False) as progress:
            yield _RichTask(progress, progress.add_task(description, total=total))


QUIET = Progress(enabled=False)
