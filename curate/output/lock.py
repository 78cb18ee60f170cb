"""One writer per output: a lock held for the whole run.

A local output is locked with `fcntl.flock` on `OUT/.curate-lock`, held by the driver; the
kernel drops the lock when the process dies (kill -9 included), so a dead run's lock is taken
over by the next run without anyone cleaning up. The file itself says who holds it (host, pid,
since when) for the second run's message. An output in an object store is leased instead: an
object `.curate-lease.json` with an expiry that the holder renews; a lease past its expiry
(its holder died) is taken over. Readers (`verify`, `inspect`, `export`) take neither.

flock works on local disks and on most network file systems that support it (NFSv4); where it
does not, two runs on one output are not detected.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from curate.errors import OutputError
from curate.output.layout import LOCK_NAME

LEASE_SECONDS = 60.0  # a lease not renewed for this long is a dead holder's
_RENEW_EVERY = LEASE_SECONDS / 4
_CONFIRM_AFTER = 0.5  # seconds between writing a lease and reading it back (two writers race)


def _holder() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _dead_here(holder: dict[str, Any]) -> bool:
    """A lease of a process on this machine that no longer runs (killed): taken over at once,
    not after its expiry, so a `--resume` right after a kill goes on."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"


def _busy(where: object, holder: dict[str, Any]) -> OutputError:
    return OutputError(
        f"another curate run is writing this output ({_describe(holder)})",
        path=where,
        fix="wait for that run to finish (or stop it), then rerun; or choose another -o",
    )


class OutputLock:
    """The exclusive lock on a local output directory, created if missing."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None
        self.created_directory = False

    def acquire(self) -> OutputLock:
        import fcntl

        try:
            self.created_directory = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(
                f"cannot write the output directory ({exc.strerror or exc})", path=self.out, fix="choose a writable -o"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(self.out, holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        os.close(self._fd)  # closing drops the flock; the file stays (a reader may hold it open)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


class OutputLease:
    """A renewed lease on an object-store output: `.curate-lease.json` under the prefix."""

    def __init__(self, fs: Any, key: str, url: str):
        self.fs, self.key, self.url = fs, key, url
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(self.key))
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn or foreign lease: nobody holds it

    def _write(self) -> None:
        lease = {**_holder(), "token": self.token, "expires": time.time() + LEASE_SECONDS}
        self.fs.pipe_file(self.key, json.dumps(lease).encode())

    def acquire(self) -> OutputLease:
        current = self._read()
        if (
            current is not None
            and current.get("token") != self.token
            and current.get("expires", 0) > time.time()
            and not _dead_here(current)
        ):
            raise _busy(self.url, current)
        self._write()
        time.sleep(_CONFIRM_AFTER)
        self.fs.invalidate_cache(self.key)
        current = self._read()
        if current is None or current.get("token") != self.token:  # another run wrote after us: it wins
            raise _busy(self.url, current or {})
        self._renewer = threading.Thread(target=self._renew, name="curate-lease", daemon=True)
        self._renewer.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(_RENEW_EVERY):
            try:
                self._write()
            except Exception:  # a missed renewal is retried; the lease lasts 4 renewals
                continue

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
            try:
                current = self._read()
                if current is not None and current.get("token") == self.token:
                    self.fs.rm_file(self.key)
            except Exception:  # the lease expires by itself
                pass

    def __enter__(self) -> OutputLease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
