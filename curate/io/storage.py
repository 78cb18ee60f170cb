"""Where input bytes live: a local path, or an fsspec URL (s3://, gs://, az://, ...).

Local paths are opened by pyarrow natively (memory maps, its own file reader); URLs go through
fsspec, whose backends are optional extras. `file://` URLs are plain local paths.
Storage options (endpoint, credentials, ...) are `(key, value)` pairs, passed to fsspec as
keyword arguments; credentials may equally come the backend's usual way (for S3 the AWS_*
environment variables, AWS_ENDPOINT_URL included, and profiles; for Azure
AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_*; for GCS Google's default
credentials, and STORAGE_EMULATOR_HOST for an emulator).
"""

from __future__ import annotations

import logging
import os
import posixpath
from typing import Any, BinaryIO, Callable, Iterable

from curate.errors import CurateError, InputError, OutputError, UsageError
from curate.io.atomic import atomic_path

StorageOptions = tuple[tuple[str, Any], ...]
# fsspec protocol -> the curate extra that installs its backend
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}
# gcsfs logs a request that ran out of retries as a whole traceback (logger.exception) before
# the error reaches curate, which reports it in one line; with a handler of its own the logger
# no longer falls through to Python's last-resort stderr handler (logging a user configures
# still receives the records).
logging.getLogger("gcsfs").addHandler(logging.NullHandler())
FIX_REMOTE = "check the URL, the endpoint and the credentials (--storage-option KEY=VALUE, or the backend's environment variables)"


def is_url(location: str) -> bool:
    return "://" in str(location)


def worker_modules(locations: Iterable[str | os.PathLike]) -> list[str]:
    """Modules worth importing once in the fork server for a run over these locations: s3fs
    and botocore cost about 0.3 s of CPU to import in every worker process."""
    texts = [local_or_url(str(location)) for location in locations]
    return ["s3fs"] if any(is_url(t) and EXTRAS.get(protocol(t)) == "s3" for t in texts) else []


def check_scheme(url: str) -> None:
    """Exit 2 for a URL scheme curate does not read: http(s) servers list no directories and
    many serve no byte ranges (Parquet footers), so they are refused rather than half-working."""
    scheme = protocol(url)
    if scheme in EXTRAS or scheme in ("file", "memory"):
        return
    supported = "a local path, file://, " + ", ".join(f"{s}://" for s in EXTRAS)
    raise UsageError(
        f"{scheme}:// input is not supported", path=url, fix=f"download the files first, or use {supported}"
    )


def local_or_url(source: str) -> str:
    """`file:///data/x` -> `/data/x`; anything else unchanged."""
    text = str(source)
    return text[len("file://") :] if text.startswith("file://") else text


def protocol(url: str) -> str:
    return url.split("://", 1)[0]


def filesystem(url: str, options: StorageOptions = ()) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it); a missing backend is exit 2 naming the extra."""
    scheme = protocol(url)
    try:
        import fsspec

        kwargs = _with_defaults(scheme, dict(options))
        if EXTRAS.get(scheme) == "gcs" and _non_google_endpoint(kwargs):
            from gcsfs.core import GCSFileSystem

            fs = GCSFileSystem(**kwargs)
            found = fs, fs._strip_protocol(url)
        else:
            found = fsspec.core.url_to_fs(url, **kwargs)
    except ImportError as exc:
        extra = EXTRAS.get(scheme)
        fix = f"pip install 'curate[{extra}]'" if extra else f"install the fsspec backend for {scheme}://"
        raise UsageError(f"reading {scheme}:// needs an optional dependency ({exc})", path=url, fix=fix) from None
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"cannot use this URL ({exc})",
            path=url,
            fix="use s3://, gs://, az://, file:// or a local path; check --storage-option keys",
        ) from None
    _check_reachable(url, found[0])
    return found


# Azure's SDK and gcsfs retry a refused connection with back-off that no storage option
# shortens (measured against a closed port: az:// 86 s, gs:// 34 s before the one-line error).
# One TCP connect to the endpoint, once per process and endpoint, fails in at most this long.
CONNECT_TIMEOUT = 3.0
_REACHED: set[tuple[str, int]] = set()


def _endpoint(fs: Any) -> str | None:
    """The HTTP endpoint of an Azure (adlfs) or GCS (gcsfs) filesystem; None for others
    (s3fs's own connect timeout is set in _S3_CONFIG)."""
    client = getattr(fs, "service_client", None)  # adlfs
    if client is not None:
        return getattr(client, "url", None)
    if type(fs).__module__.startswith("gcsfs"):
        return getattr(fs, "_location", None)
    return None


def _through_proxy(scheme: str, host: str) -> bool:
    """A proxy from the environment (HTTPS_PROXY, ...) carries the client's connections: a
    direct connect would say nothing about whether the endpoint is reachable."""
    from urllib.request import getproxies, proxy_bypass

    return scheme in getproxies() and not proxy_bypass(host)


def _check_reachable(url: str, fs: Any) -> None:
    import socket
    from urllib.parse import urlsplit

    endpoint = _endpoint(fs)
    if not isinstance(endpoint, str) or "://" not in endpoint:
        return
    parts = urlsplit(endpoint)
    if not parts.hostname:
        return
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if address in _REACHED or _through_proxy(parts.scheme, parts.hostname):
        return
    try:
        socket.create_connection(address, timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"cannot connect to {parts.scheme}://{address[0]}:{address[1]} within {CONNECT_TIMEOUT:g} s ({reason})",
            path=url,
            fix=FIX_REMOTE,
        ) from None
    _REACHED.add(address)


# An unreachable S3 endpoint must fail within seconds, not after botocore's and s3fs's
# retries multiply (measured: 10-13 s to refuse a closed port with the defaults; with these,
# about 2 s). A user's own config_kwargs win.
_S3_CONFIG = {"connect_timeout": 3, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}


def _with_defaults(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    if EXTRAS.get(scheme) == "s3" and "config_kwargs" not in options:
        options["config_kwargs"] = _S3_CONFIG
    return options


def _non_google_endpoint(options: dict[str, Any]) -> bool:
    """An endpoint other than Google's (an emulator, or a GCS-compatible server): gcsfs's
    default class then asks the Storage Control gRPC API for each bucket's layout, which such
    servers do not serve. Measured against gcp-storage-emulator: every call that touches a
    bucket waited out a 60 s gRPC retry (a TLS handshake to a plain HTTP port, never cached);
    the HTTP JSON client alone answers in milliseconds."""
    endpoint = options.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST", "")
    return endpoint not in ("", "default") and "googleapis.com" not in str(endpoint)


def bucket_word(url: str) -> str:
    """What the store calls its top level, for error messages: Azure calls buckets containers."""
    return "container" if EXTRAS.get(protocol(url)) == "azure" else "bucket"


def join(location: str, name: str) -> str:
    return posixpath.join(location, name)


def parent(location: str) -> str:
    return posixpath.dirname(location.rstrip("/"))


def name(location: str) -> str:
    return posixpath.basename(location.rstrip("/"))


def order_key(location: str) -> tuple[str, ...]:
    """Input order: path components compared in turn (as pathlib sorts), so `a/b` < `a-c`."""
    return tuple(location.split("/"))


class Remote:
    """Listing and opening under one URL, with errors turned into one line naming the URL."""

    def __init__(self, url: str, options: StorageOptions = ()):
        self.url = url
        self.fs, self.path = filesystem(url, options)
        self.scheme = protocol(url)

    def location(self, path: str) -> str:
        return f"{self.scheme}://{path.lstrip('/')}"

    def call(self, what: str, fn, *args, **kwargs):
        return call_backend(self.url, what, fn, *args, **kwargs)

    def glob(self) -> list[str]:
        return [self.location(p) for p in self.call("list", self.fs.glob, self.path)]

    def find(self) -> list[str]:
        return [self.location(p) for p in self.call("list", self.fs.find, self.path)]

    def kind(self, path: str | None = None) -> str | None:
        """ "file", "directory", or None when nothing is there. Only FileNotFoundError means
        absent: fsspec's isdir/isfile/exists answer False on any OSError, which aiohttp's
        connection errors are, so gcsfs made an unreachable endpoint a missing input."""

        def info() -> str | None:
            try:
                return self.fs.info(self.path if path is None else path)["type"]
            except FileNotFoundError:
                return None

        return self.call("list", info)

    def isdir(self, path: str | None = None) -> bool:
        return self.kind(path) == "directory"

    def isfile(self, path: str | None = None) -> bool:
        return self.kind(path) == "file"


def call_backend(
    url: str,
    what: str,
    fn: Callable[..., Any],
    *args: Any,
    error: type[CurateError] = InputError,
    missing: str = "input does not exist",
    missing_fix: str = FIX_REMOTE,
    **kwargs: Any,
) -> Any:
    """`fn(*args, **kwargs)` with a backend's errors (botocore, aiohttp, ...) turned into one
    line naming the URL: `error` (InputError for input, OutputError for an output)."""
    try:
        return fn(*args, **kwargs)
    except CurateError:
        raise
    except FileNotFoundError:
        raise error(missing, path=url, fix=missing_fix) from None
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise error(
            f"cannot {what} ({type(exc).__name__}: {text[0] if text else ''})", path=url, fix=FIX_REMOTE
        ) from None


def open_binary(location: str, options: StorageOptions = (), size: int | None = None) -> BinaryIO:
    """An fsspec file for a URL (read-ahead buffered by the backend); a known `size` saves the
    HEAD request that opening would make."""
    remote = Remote(location, options)
    kwargs = dict(_OPEN_DEFAULTS.get(EXTRAS.get(remote.scheme, ""), {}))
    if size is not None:
        kwargs["size"] = size
    return remote.call("open", remote.fs.open, remote.path, "rb", **kwargs)


# gcsfs's default "adaptive" cache starts background prefetch tasks on fsspec's event loop; the
# files pyarrow leaves to the garbage collector then end each run with "Task was destroyed but
# it is pending!" lines on stderr (measured: 12 per 3-shard run against
# gcp-storage-emulator). "readahead" is fsspec's plain buffered read, which s3fs uses too.
_OPEN_DEFAULTS = {"gcs": {"cache_type": "readahead"}}


def size(location: str, options: StorageOptions = ()) -> int:
    if not is_url(location):
        return os.stat(location).st_size
    remote = Remote(location, options)
    return int(remote.call("read", remote.fs.size, remote.path))


def exists(location: str, options: StorageOptions = ()) -> bool:
    if not is_url(location):
        return os.path.exists(location)
    return Remote(location, options).kind() is not None


def read_bytes(location: str, options: StorageOptions = ()) -> bytes:
    if not is_url(location):
        with open(location, "rb") as handle:
            return handle.read()
    remote = Remote(location, options)
    return remote.call("read", remote.fs.cat_file, remote.path)


def download_file(fs: Any, key: str, path: str | os.PathLike) -> bool:
    """One object to a local file, under a temp name renamed into place (a reader never sees
    half a file; two processes fetching the same object both land the same bytes); False when
    there is no such object."""
    try:
        with atomic_path(path, unique=True, publish=False) as temp:
            fs.get_file(key, str(temp))
            if not temp.is_file():
                raise FileNotFoundError(key)
    except FileNotFoundError:
        return False
    return True


def digest_stream(handle: BinaryIO, digest: Any = None) -> Any:
    """`digest` (xxh3-128 by default) updated with every byte of `handle`, read in 4 MiB blocks."""
    import xxhash

    digest = xxhash.xxh3_128() if digest is None else digest
    for block in iter(lambda: handle.read(1 << 22), b""):
        digest.update(block)
    return digest


def file_digest(path: str | os.PathLike) -> str:
    """xxh3-128 of a local file's bytes: what the commit record and the indexes store."""
    with open(path, "rb") as handle:
        return digest_stream(handle).hexdigest()


def call_output(url: str, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """A backend call on the output store: its errors as one line naming the URL, exit 2."""
    return call_backend(
        url,
        what,
        fn,
        *args,
        error=OutputError,
        missing=f"cannot {what}: not found",
        missing_fix=f"create the {bucket_word(url)} first, or " + FIX_REMOTE,
        **kwargs,
    )
