"""The thin client is thin: its package declares no server, runtime or model dependency, and
importing every client module pulls in none of them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("seglabel_server", "seglabel_export", "onnxruntime", "torch", "sam2", "open_clip", "tensorrt", "PIL")


def test_client_package_declares_no_server_or_runtime_dependency():
    project = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["project"]
    deps = [d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in project["dependencies"]]
    assert deps and not {"onnxruntime", "torch", "seglabel", "pillow", "pycocotools"} & set(deps), deps
    tool = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {p.split(".")[0] for p in tool["packages"]} == {"seglabel_client", "seglabel_api"}
    assert set(project["scripts"]) == {"seglabel", "seglabel-bench"}


def test_client_modules_import_nothing_heavy():
    code = (
        "import sys\n"
        "import seglabel_client, seglabel_client.client, seglabel_client.cli, seglabel_client.bench\n"
        "import seglabel_client.analysis\n"
        "from seglabel_client import SegmenterClient, sample_image_bytes\n"
        "assert sample_image_bytes()[:2] == b'\\xff\\xd8'\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout


def test_export_imports_no_client_code():
    sources = "\n".join(p.read_text() for p in (ROOT / "export" / "seglabel_export").glob("*.py"))
    server = "\n".join(p.read_text() for p in (ROOT / "server" / "seglabel_server").rglob("*.py"))
    assert "seglabel_client" not in sources and "seglabel_client" not in server
