"""A real Label Studio for the tests (``make label-studio`` installs it into its own venv): started
on 127.0.0.1 with SQLite in a temporary folder, with its error reporting, analytics and update
check off, so that nothing tries to reach beyond this machine. It is driven through its SDK by
``labelstudio_driver.py``, which runs in that venv."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.system import free_port, need

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "make label-studio (Label Studio and its SDK, in .venv-ls)"
USER, PASSWORD = "team@example.com", "seglabel-test-1"


def venv() -> tuple[Path | None, str | None]:
    path = Path(os.environ.get("SEGLABEL_LABEL_STUDIO_VENV", ROOT / ".venv-ls"))
    if not (path / "bin" / "label-studio").exists():
        return None, f"no {path}/bin/label-studio"
    return path, None


class LabelStudio:
    """``url``, ``token`` (a personal access token), ``call(op, **kw)`` (the driver), ``stop()``."""

    def __init__(self, data_dir: Path):
        path, problem = venv()
        need("label-studio", problem, INSTALL)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
            "LATEST_VERSION_CHECK": "false",
            "FEATURE_FLAGS_OFFLINE": "true",
            # its ML backend (seglabel) and its own file reads are on loopback
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_HOST": self.url,  # the hostname /setup sends: where seglabel reads files
        }
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "label-studio.log", "wb")
        self.proc = subprocess.Popen(
            [str(path / "bin" / "label-studio"), "start", "--no-browser", "--port", str(self.port),
             "--internal-host", "127.0.0.1", "--username", USER, "--password", PASSWORD],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=data_dir,
        )  # fmt: skip
        try:
            self._wait()
            self.token = self._personal_token()
            self.driver = subprocess.Popen(
                [str(path / "bin" / "python"), str(ROOT / "tests" / "labelstudio_driver.py"), self.url, self.token],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _wait(self, seconds: float = 240) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited ({self.proc.returncode}); see {self.log.name}")
            try:
                if requests.get(self.url + "/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"label-studio did not answer /health in {seconds} s; see {self.log.name}")

    def _personal_token(self) -> str:
        """A personal access token, made as a user makes one (signed in, Account -> Access token):
        Label Studio 1.23 turns legacy tokens off."""
        s = requests.Session()
        s.get(self.url + "/user/login/", timeout=30)
        s.post(self.url + "/user/login/", timeout=30, headers={"Referer": self.url + "/user/login/"},
               data={"email": USER, "password": PASSWORD, "csrfmiddlewaretoken": s.cookies.get("csrftoken")})  # fmt: skip
        r = s.post(self.url + "/api/token/", json={}, timeout=30,
                   headers={"X-CSRFToken": s.cookies.get("csrftoken", ""), "Referer": self.url})  # fmt: skip
        r.raise_for_status()
        return r.json()["token"]

    def call(self, op: str, **kw):
        self.driver.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        if not line:
            raise RuntimeError(f"the Label Studio driver exited; see {self.log.name}")
        got = json.loads(line)
        if "error" in got:
            raise RuntimeError(f"label studio {op}: {got['error']}")
        return got["ok"]

    async def acall(self, op: str, **kw):
        """:meth:`call` off the event loop (the tests' servers share it)."""
        return await asyncio.to_thread(self.call, op, **kw)

    def stop(self) -> None:
        for p in (getattr(self, "driver", None), self.proc):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.log.close()


if __name__ == "__main__":  # a Label Studio to try by hand: python -m tests.labelstudio /tmp/ls
    ls = LabelStudio(Path(sys.argv[1]))
    print(ls.url, ls.token, flush=True)
    try:
        ls.proc.wait()
    finally:
        ls.stop()
