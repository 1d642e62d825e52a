"""Shared fixtures: one tiny model repository (sam2's and open_clip's real classes, shrunk) exported
once per test session; servers on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from seglabel_client import sample_image_bytes


def _shared_repo(tmp_path_factory, name: str, **kw) -> Path:
    """A repository exported once per run: under pytest-xdist (make test) the workers share one
    folder and a lock, as xdist's documentation does it, instead of exporting it once each."""
    from filelock import FileLock
    from seglabel_export.exporter import export_repository

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    out = root / "shared-models" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not (out / "manifest.json").is_file():
            export_repository(out, "tiny", "tiny", log=lambda m: None, **kw)
    return out


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return _shared_repo(tmp_path_factory, "tiny")


@pytest.fixture(scope="session")
def scene_repo(tmp_path_factory) -> Path:
    """The tiny repository plus Depth Anything V2 (tiny config) and rapidocr's real PP-OCR graphs."""
    return _shared_repo(tmp_path_factory, "scene", depth_source="tiny", ocr=True)


@pytest.fixture(scope="session")
def tiny_repo_no_clip(tiny_repo, tmp_path_factory) -> Path:
    """The same SAM2 graphs, no CLIP in the manifest (labelling unavailable)."""
    out = tmp_path_factory.mktemp("models") / "noclip"
    shutil.copytree(tiny_repo, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["clip"] = None
    for name in ("clip_image_encoder", "clip_text_encoder"):
        manifest["models"].pop(name)
        shutil.rmtree(out / name)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="session")
def photo_bytes() -> bytes:
    return sample_image_bytes("astronaut.jpg")


@pytest.fixture(scope="session")
def photo(photo_bytes) -> np.ndarray:
    from seglabel_server.models.images import decode_image

    return decode_image(photo_bytes)


def distinct_images(n: int, size=(96, 128)) -> list[bytes]:
    """n visibly different real-photo crops, PNG encoded."""
    import io

    from PIL import Image
    from seglabel_server.models.images import decode_image

    out = []
    for i in range(n):
        img = decode_image(sample_image_bytes(("astronaut.jpg", "coffee.jpg")[i % 2]))
        y, x = (i * 37) % (img.shape[0] - size[0]), (i * 53) % (img.shape[1] - size[1])
        buf = io.BytesIO()
        Image.fromarray(img[y : y + size[0], x : x + size[1]]).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="session")
def redis_url():
    """A redis-server of this test session (skipped, with the reason, where none is installed)."""
    from tests.system import RedisProcess, need, redis_server_path

    path, problem = redis_server_path()
    need("redis", problem)
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        need("redis", f"the redis client is not installed ({exc})")
    server = RedisProcess(path)
    yield server.url
    server.stop()


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first (each file's own order kept): make test's two workers then share
    the long files from the start instead of one of them finishing the suite alone."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
