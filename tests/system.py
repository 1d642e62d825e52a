"""System components some tests need (a browser, Redis): found, or the test is skipped with the
reason, unless SEGLABEL_REQUIRE names the component (CI sets it) and then a missing one fails."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest
from seglabel_client.bench import free_port  # noqa: F401  (the tests take it from here)

INSTALL = "make system-deps (as root: apt-get install chromium redis-server)"


def required(component: str) -> bool:
    return component in {c.strip() for c in os.environ.get("SEGLABEL_REQUIRE", "").split(",")}


def need(component: str, problem: str | None, install: str = INSTALL) -> None:
    """``problem`` is None when the component is there; otherwise why it is not."""
    if problem is None:
        return
    message = f"{component} unavailable: {problem}; install with {install}"
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


@contextlib.asynccontextmanager
async def headless_chromium(*args: str):
    """The distribution's Chromium, headless, driven by Playwright (the test skips where either is
    missing); ``args``: more command-line switches."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        need("browser", f"playwright is not installed ({exc})")
    path, problem = chromium()
    need("browser", problem)
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=path, headless=True, args=["--disable-dev-shm-usage", *args]
        )
        try:
            yield b
        finally:
            await b.close()


def output_dir(name: str):
    """Where a test leaves files for people to look at (screenshots): test-output/<name>/."""
    from pathlib import Path

    out = Path(os.environ.get("SEGLABEL_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))
    out = out / name
    out.mkdir(parents=True, exist_ok=True)
    return out


def redis_server_path() -> tuple[str | None, str | None]:
    path = shutil.which("redis-server")
    return (path, None) if path else (None, "no redis-server executable on PATH")


class RedisProcess:
    """A throw-away redis-server on 127.0.0.1 (no persistence, LRU under a memory cap), as
    ``make redis`` starts one; ``url`` to connect, ``stop()`` when done."""

    def __init__(self, executable: str, maxmemory: str = "256mb"):
        import socket
        import subprocess
        import time

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxmemory",
                maxmemory,
                "--maxmemory-policy",
                "volatile-lru",  # as make redis: vocabularies (no expiry) are never dropped
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("redis-server did not answer PING within 5 s")
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
