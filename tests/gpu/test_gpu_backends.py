"""GPU backends: the torch CUDA backend against torch on the CPU, and TensorRT engines end to end.
Skipped, with the reason, where CUDA / TensorRT are absent."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from seglabel_export.parity import rel_l2
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository

pytestmark = pytest.mark.gpu  # CUDA, onnxruntime-gpu or TensorRT (each test skips, saying why, where absent)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
trt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="TensorRT engines need the tensorrt package and a CUDA GPU",
)


@cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("bf16", 5e-2), ("fp16", 2e-2)])
def test_torch_cuda_matches_cpu(tiny_repo, precision, tol):
    from seglabel_server.backends import create_backend

    repo = ModelRepository.load(tiny_repo)
    cpu, gpu = create_backend("torch", repo, "cpu"), create_backend("torch", repo, "cuda", precision)
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    coords = np.random.default_rng(1).uniform(0, 256, (8, 1, 2)).astype(np.float32)
    labels = np.ones((8, 1), np.int32)
    a, b = (
        sam2.decode(cpu, sam2.encode(cpu, x)[0], coords, labels),
        sam2.decode(gpu, sam2.encode(gpu, x)[0], coords, labels),
    )
    assert rel_l2(b.masks.numpy(), a.masks.numpy()) < tol
    assert rel_l2(b.iou, a.iou) < tol


@trt
def test_tensorrt_engines_match_onnxruntime(tiny_repo, tmp_path, photo):
    from seglabel_export.trt import build_engines
    from seglabel_server.backends import create_backend

    repo_dir = tmp_path / "trt"
    shutil.copytree(tiny_repo, repo_dir)
    build_engines(repo_dir, fp16=False, max_prompts=64)
    repo = ModelRepository.load(repo_dir)
    ours, ref = create_backend("tensorrt", repo, "cuda"), create_backend("onnxruntime", repo)
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32)
    fa, fb = sam2.encode(ours, x), sam2.encode(ref, x)
    assert rel_l2(fa[1].arrays["image_embed"], fb[1].arrays["image_embed"]) < 1e-3
    coords = np.random.default_rng(1).uniform(0, 256, (7, 2, 2)).astype(np.float32)
    labels = np.ones((7, 2), np.int32)
    a, b = sam2.decode(ours, fa[0], coords, labels), sam2.decode(ref, fb[0], coords, labels)
    assert rel_l2(a.masks.numpy(), b.masks.numpy()) < 1e-3
    # min_iou: the engine's data-dependent outputs (kept prompts) through the output allocator
    best = np.sort(b.iou.max(axis=1))
    cut = float((best[2] + best[3]) / 2)
    a, b = sam2.decode(ours, fa[0], coords, labels, cut), sam2.decode(ref, fb[0], coords, labels, cut)
    assert a.kept.tolist() == b.kept.tolist() and len(b.kept) == 4
    assert rel_l2(a.masks.numpy(), b.masks.numpy()) < 1e-3
    assert ours.info.name == "tensorrt" and "TensorRT" in ours.info.providers[0]


ort_cuda = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None
    or "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers(),
    reason="ONNX Runtime's CUDA provider needs onnxruntime-gpu (this onnxruntime has none)",
)


def _answers(backend, repo, image, cfg=None, concurrent: int = 1):
    import asyncio

    from seglabel_server.service import build_pipeline
    from seglabel_server.service.config import ServerConfig
    from seglabel_server.types import RequestContext, SegmentOptions

    params = SegmentOptions(
        points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, max_masks=40
    )
    pipe = build_pipeline(backend, repo, cfg or ServerConfig())

    async def many():
        return await asyncio.gather(*[pipe.run(params, image, RequestContext()) for _ in range(concurrent)])

    try:
        return asyncio.run(many())
    finally:
        pipe.close()


def _same_answers(ours, ref):
    from pycocotools import mask as mask_utils

    def rles(r):
        return [{"size": m.rle["size"], "counts": m.rle["counts"].encode("ascii")} for m in r.masks]

    assert len(ours.masks) == len(ref.masks) > 0
    iou = np.asarray(mask_utils.iou(rles(ours), rles(ref), [0] * len(ref.masks)))
    assert iou.max(axis=1).mean() >= 0.99
    assert [lab.label for lab in ours.labels] == [lab.label for lab in ref.labels]


@cuda
@pytest.mark.parametrize("layout", ["per-image", "multi-image"])
def test_cuda_device_mask_path_matches_the_cpu_host_path(tiny_repo, photo, layout):
    """The device path on the GPU (fp32), with stage workers on their own CUDA streams and 4
    concurrent requests, gives the CPU host path's masks and labels."""
    from seglabel_server.backends import create_backend
    from seglabel_server.service.config import ServerConfig

    repo = ModelRepository.load(tiny_repo)
    gpu = create_backend("torch", repo, "cuda", decoder_layout=layout)
    assert "device_masks" in gpu.capabilities
    cfg = ServerConfig(backend="torch", device="cuda")
    assert len(cfg.worker_groups(["encoder", "decoder", "clip", "text"])) == 2
    (ref,) = _answers(create_backend("torch", repo, "cpu", mask_path="host"), repo, photo)
    for ours in _answers(gpu, repo, photo, cfg, concurrent=4):
        _same_answers(ours, ref)


@cuda
def test_compiled_cuda_graph_engines_match_eager(tiny_repo, photo):
    from seglabel_server.backends import create_backend

    repo = ModelRepository.load(tiny_repo)
    compiled = create_backend(
        "torch", repo, "cuda", compile_mode="reduce-overhead", max_batches={"sam2_mask_decoder": 64}
    )
    graphs, seconds = compiled.warm_up()
    print(f"reduce-overhead: {graphs} bucket graphs in {seconds:.1f}s")
    assert graphs > 0
    (ref,) = _answers(create_backend("torch", repo, "cuda"), repo, photo)
    (ours,) = _answers(compiled, repo, photo)
    _same_answers(ours, ref)


@ort_cuda
def test_onnxruntime_cuda_with_io_binding_matches_the_cpu(tiny_repo, photo):
    from seglabel_server.backends import create_backend

    repo = ModelRepository.load(tiny_repo)
    gpu = create_backend("onnxruntime", repo, "cuda")
    assert gpu.io_binding and gpu.info.providers == ["CUDAExecutionProvider"]
    (ref,) = _answers(create_backend("onnxruntime", repo), repo, photo)
    (ours,) = _answers(gpu, repo, photo)
    _same_answers(ours, ref)


@cuda
def test_aot_packages_on_cuda_match_eager(tiny_repo, tmp_path, photo):
    """`seglabel-export aot` on CUDA (Triton kernels), every model, the multi-image layout; the
    packages' answers with the device path and 4 concurrent requests against eager torch on CUDA."""
    from seglabel_export.aoti import build_packages
    from seglabel_server.backends import create_backend
    from seglabel_server.service.config import ServerConfig

    repo_dir = tmp_path / "tiny"
    shutil.copytree(tiny_repo, repo_dir)
    built = build_packages(repo_dir, "cuda", "fp32", "multi-image")
    assert len(built) == 4
    repo = ModelRepository.load(repo_dir)
    aot = create_backend("torch", repo, "cuda", compile_mode="aot")
    runs, seconds = aot.warm_up()
    print(f"aot fp32: built in {sum(b['seconds'] for b in built.values()):.1f}s, warm-up {seconds:.2f}s")
    (ref,) = _answers(create_backend("torch", repo, "cuda"), repo, photo)
    cfg = ServerConfig(backend="torch", device="cuda", torch_compile="aot")
    for ours in _answers(aot, repo, photo, cfg, concurrent=4):
        _same_answers(ours, ref)


@cuda
def test_aot_bf16_packages_match_cpu(tiny_repo, tmp_path):
    """bf16 packages (autocast inside): encoder and decoder against torch fp32 on the CPU, with the
    tolerance of the eager bf16 backend (test_torch_cuda_matches_cpu)."""
    from seglabel_export.aoti import build_packages
    from seglabel_server.backends import create_backend

    repo_dir = tmp_path / "tiny"
    shutil.copytree(tiny_repo, repo_dir)
    models = ["sam2_image_encoder", "sam2_mask_decoder"]
    build_packages(repo_dir, "cuda", "bf16", "multi-image", models=models)
    repo = ModelRepository.load(repo_dir)
    cpu = create_backend("torch", repo, "cpu", models=models)
    gpu = create_backend("torch", repo, "cuda", "bf16", compile_mode="aot", models=models)
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    coords = np.random.default_rng(1).uniform(0, 256, (8, 1, 2)).astype(np.float32)
    labels = np.ones((8, 1), np.int32)
    a = sam2.decode(cpu, sam2.encode(cpu, x)[0], coords, labels)
    b = sam2.decode(gpu, sam2.encode(gpu, x)[0], coords, labels)
    assert rel_l2(b.masks.numpy(), a.masks.numpy()) < 5e-2
    assert rel_l2(b.iou, a.iou) < 5e-2
