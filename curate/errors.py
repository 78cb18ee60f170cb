"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations

import errno
import os
import re


class CurateError(Exception):
    """Bad input or usage: the message names the file (when there is one) and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None):
        message = redact(message)
        path = None if path is None else redact(str(path))
        parts = [f"{path}: {message}" if path is not None else message]
        if fix:
            parts.append(f"fix: {fix}")
        super().__init__(" -- ".join(parts))


class InputError(CurateError):
    """The input data breaks the data contract (schema, nulls, corrupt files, duplicate ids)."""


class UsageError(CurateError):
    """The command line or pipeline file is wrong."""


class OutputError(CurateError):
    """The output directory cannot be used as asked (non-empty, unwritable, full disk)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none): what a one-line
    error quotes of a library's multi-line message."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# OS errors that mean "this location cannot take the writes" (not a bug in curate).
WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EFBIG,
}


def as_write_error(exc: OSError, where: object = None) -> OutputError | None:
    """The one-line exit-2 error for an OSError that says the disk cannot take a write (full,
    read-only, over a size limit, or numpy's errno-less short write "N requested and M
    written"); None for other OS errors."""
    text = str(exc)
    short = exc.errno is None and "requested and" in text and "written" in text
    if exc.errno not in WRITE_ERRNOS and not short:
        return None
    why = "a short write: the file system took fewer bytes than written" if short else os.strerror(exc.errno)
    return OutputError(
        f"cannot write ({why})",
        path=exc.filename or where,
        fix="free disk space or make the output writable (or raise the file-size limit), then rerun with --resume (finished stages are kept)",
    )


_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/\s:@]*):(?P<secret>[^/\s@]+)@")


def redact(text: str) -> str:
    """A URL's password (`scheme://user:SECRET@host`) masked, wherever it appears in `text`:
    messages and the manifest never carry it."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_all(value: object) -> object:
    """`redact` over every string in a JSON-like value."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_all(v) for v in value]
    return value
