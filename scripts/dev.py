#!/usr/bin/env python3
"""One-command set-up and run, on a fresh machine with only python3.

    python3 scripts/dev.py demo     # creates/reuses .venv, installs, runs `curate demo`
    python3 scripts/dev.py test     # same set-up, then runs the test suite
    python3 scripts/dev.py lint     # ruff check and ruff format --check
    python3 scripts/dev.py curate ARGS...   # any curate command in the venv

torch is installed first as `torch==2.13.0` (the CPU build this machine carries); a plain
`torch` requirement would pull a multi-GB CUDA build. The project install is redone only
when pyproject.toml changes (a stamp file remembers its hash)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("CURATE_VENV", ROOT / ".venv"))
TORCH = os.environ.get("CURATE_TORCH", "torch==2.13.0")
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _run(*args: str, **kwargs) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, **kwargs)


def _python() -> str:
    return str(BIN / "python")


def ensure_env() -> None:
    if not (BIN / "python").exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
        _run(_python(), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    stamp = VENV / ".curate-install-stamp"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    _run(_python(), "-m", "pip", "install", "--quiet", TORCH)
    _run(_python(), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]")
    stamp.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test", "lint", "curate"}:
        print(__doc__)
        return 2
    ensure_env()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command, rest = argv[0], argv[1:]
    if command == "demo":
        args = [str(BIN / "curate"), "demo", *rest]
    elif command == "test":
        args = [_python(), "-m", "pytest", *rest]
    elif command == "lint":
        paths = rest or ["curate", "tests", "bench", "scripts"]
        for check in (["check"], ["format", "--check"]):
            done = subprocess.run([_python(), "-m", "ruff", *check, *paths], cwd=ROOT, env=env)
            if done.returncode:
                return done.returncode
        return 0
    else:
        args = [str(BIN / "curate"), *rest]
    print("+", " ".join(args), flush=True)
    return subprocess.run(args, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
