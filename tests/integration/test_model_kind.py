"""Adding a model kind touches only its registration, its export wrapper and its use: a toy
"image mean" kind, defined here in the tests alone, runs through export, every backend, the
scheduler's batching, metrics, the flags and GetServerInfo without a change to server code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from seglabel_client.client import AsyncSegmenterClient
from seglabel_server.backends import create_backend
from seglabel_server.metrics import Metrics
from seglabel_server.models import kinds
from seglabel_server.models.repository import ModelRepository
from seglabel_server.scheduler import Scheduler
from seglabel_server.service.config import ServerConfig, config_from_args
from seglabel_server.transport.server import create_server
from seglabel_server.types import RequestContext
from torch import nn


class ImageMean(nn.Module):
    """The toy kind's export wrapper: pixels [B,3,H,W] -> per-channel means [B,3] and their
    spread [B] (two outputs, so outputs must be fetched by name)."""

    input_names = ["pixels"]
    output_names = ["means", "spread"]

    def forward(self, pixels):
        means = pixels.mean(dim=(2, 3))
        return means, means.max(dim=1).values - means.min(dim=1).values


def build_image_mean(manifest: dict, device: str, shared: dict) -> nn.Module:
    return ImageMean()


TOY = kinds.ModelKind(
    name="toy",
    model="toy_image_mean",
    family="toy",
    inputs=("pixels",),
    outputs=("means", "spread"),
    max_batch=4,
    priority=5,
    torch_builder=build_image_mean,
    description="toy: per-channel image means",
)


@pytest.fixture
def toy_kind():
    kinds.register(TOY)
    yield TOY
    kinds.unregister(TOY.name)


@pytest.fixture
def toy_repo(tiny_repo, tmp_path, toy_kind):
    """The tiny repository plus the toy model, exported the way every model kind is."""
    from seglabel_export.exporter import export_model, write_manifest

    out = tmp_path / "models"
    shutil.copytree(tiny_repo, out)
    manifest = json.loads((out / "manifest.json").read_text())
    example = {"pixels": torch.zeros(2, 3, 8, 8)}
    axes = {"pixels": {0: "batch", 2: "height", 3: "width"}, "means": {0: "batch"}, "spread": {0: "batch"}}
    entry = export_model(out, TOY.model, ImageMean().eval(), example, axes)
    manifest["models"][TOY.model] = entry
    manifest["toy"] = {
        "spec": {"architecture": "image-mean", "source": "tests", "random_weights": False},
        "sha256": hashlib.sha256((out / entry["path"]).read_bytes()).hexdigest(),
    }
    write_manifest(out, manifest)
    return out


def images(i: int, n: int) -> np.ndarray:
    """n images whose means identify request i."""
    return np.random.default_rng(i).random((n, 3, 8, 8)).astype(np.float32) + i


def backends_under_test():
    out = ["onnxruntime", "torch"]
    try:
        import tensorrt  # noqa: F401

        out.append("tensorrt")
    except ImportError:
        out.append(
            pytest.param(
                "tensorrt", marks=pytest.mark.skip(reason="the tensorrt package is not installed (no GPU)")
            )
        )
    return out


@pytest.mark.parametrize("backend_name", backends_under_test())
def test_every_backend_runs_the_new_kind_by_name(toy_repo, backend_name):
    repo = ModelRepository.load(toy_repo)
    assert TOY.model in repo.available_models()
    if backend_name == "tensorrt":
        from seglabel_export.trt import build_engines

        build_engines(toy_repo, max_batch=8, max_prompts=64, max_crops=8, log=lambda m: None)
        repo = ModelRepository.load(toy_repo)
    be = create_backend(backend_name, repo, "cuda" if backend_name == "tensorrt" else "cpu")
    assert TOY.model in be.loaded()
    x = [images(1, 2), images(2, 3)]
    a, b = TOY.execute(be, x)  # one result per item, split back by the kind
    expected = np.concatenate(x).mean(axis=(2, 3))
    np.testing.assert_allclose(np.concatenate([a, b]), expected, rtol=1e-5)
    assert a.shape == (2, 3) and b.shape == (3, 3)
    out = be.run(TOY.model, {"pixels": x[0]})
    spread = be.to_host(out["spread"])
    np.testing.assert_allclose(spread, np.ptp(expected[:2], axis=1), rtol=1e-5, atol=1e-6)


async def test_the_scheduler_batches_the_new_kind_across_requests(toy_repo):
    repo = ModelRepository.load(toy_repo)
    be = create_backend("onnxruntime", repo, models=[TOY.model])
    metrics = Metrics()
    stages = {s: c for s, c in ServerConfig().stage_configs().items() if s == "toy"}
    assert stages["toy"].max_batch_size == 4
    sched = Scheduler(be, stages, metrics)
    try:
        results = await asyncio.gather(*[sched.run("toy", images(i, 1), RequestContext()) for i in range(12)])
        for i, r in enumerate(results):
            np.testing.assert_allclose(r, images(i, 1).mean(axis=(2, 3)), rtol=1e-5)
        assert metrics.value("seglabel_inference_count_total", stage="toy") == 12
        assert metrics.value("seglabel_execution_count_total", stage="toy") < 12  # batches formed
    finally:
        sched.close()


def test_flags_and_file_settings_exist_for_the_new_kind(toy_kind, tmp_path):
    cfg, _ = config_from_args(["--max-batch-toy", "7"])
    assert cfg.stage_configs()["toy"].max_batch_size == 7
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"max_batch": {"toy": 2}}))
    assert config_from_args(["--config", str(path)])[0].stage_configs()["toy"].max_batch_size == 2


async def test_a_server_lists_and_serves_the_new_kind(toy_repo):
    server = await create_server(ServerConfig(port=0, models=str(toy_repo)))
    try:
        await server.load()
        async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=60) as c:
            info = await c.server_info()
        toy = [m for m in info.models if m.name == TOY.model]
        assert toy and toy[0].architecture == "image-mean" and not toy[0].random_weights
        assert {m.name for m in info.models} >= {"sam2_image_encoder", "clip_text_encoder", TOY.model}
        out = await server.service.lifecycle.loaded.pipeline.scheduler.run(
            "toy", images(3, 2), RequestContext()
        )
        np.testing.assert_allclose(out, images(3, 2).mean(axis=(2, 3)), rtol=1e-5)
        assert server.service.metrics.value("seglabel_inference_count_total", stage="toy") == 2
    finally:
        await server.stop(0)
