"""System components some tests need (a browser, Redis): found, or the test is skipped with the
reason, unless SEGLABEL_REQUIRE names the component (CI sets it) and then a missing one fails."""

from __future__ import annotations

import os
import shutil

import pytest

INSTALL = "make system-deps (as root: apt-get install chromium redis-server)"


def required(component: str) -> bool:
    return component in {c.strip() for c in os.environ.get("SEGLABEL_REQUIRE", "").split(",")}


def need(component: str, problem: str | None) -> None:
    """``problem`` is None when the component is there; otherwise why it is not."""
    if problem is None:
        return
    message = f"{component} unavailable: {problem}; install with {INSTALL}"
    if required(component):
        pytest.fail(f"{message} (SEGLABEL_REQUIRE={os.environ['SEGLABEL_REQUIRE']})")
    pytest.skip(message)


def chromium() -> tuple[str | None, str | None]:
    """(executable, problem): the distribution's Chromium (never a downloaded browser)."""
    candidates = [os.environ.get("SEGLABEL_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"]
    for name in filter(None, candidates):
        path = shutil.which(name)
        if path:
            return path, None
    return None, "no chromium executable on PATH (or SEGLABEL_CHROMIUM)"


def output_dir(name: str):
    """Where a test leaves files for people to look at (screenshots): test-output/<name>/."""
    from pathlib import Path

    out = Path(os.environ.get("SEGLABEL_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))
    out = out / name
    out.mkdir(parents=True, exist_ok=True)
    return out
