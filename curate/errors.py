"""Errors a user can fix. The CLI turns them into one line and exit code 2."""

from __future__ import annotations


class CurateError(Exception):
    """Bad input or usage: the message names the file (when there is one) and the fix."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, fix: str | None = None):
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
