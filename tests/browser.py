"""Headless chromium for the page tests (report, evidence, review, planner): one set of flags,
one way to read the DOM a page has after its scripts ran."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


needs_chromium = pytest.mark.skipif(
    chromium() is None,
    reason="chromium not installed (apt-get install -y chromium) -- the browser render check needs it",
)


def headless_flags() -> list[str]:
    """No network, no GPU, a profile of its own (two tests at once must not share one)."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ]


def rendered_dom(page: Path) -> str:
    """The page's DOM after load (its scripts given 5 s of virtual time)."""
    return subprocess.run(
        [chromium(), *headless_flags(), "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
