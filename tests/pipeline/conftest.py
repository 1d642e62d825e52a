from __future__ import annotations

import asyncio

import numpy as np
import pytest
from seglabel_server import amg
from seglabel_server.models.repository import ModelRepository
from seglabel_server.service import build_pipeline
from seglabel_server.service.config import ServerConfig
from seglabel_server.types import RequestContext, SegmentOptions


def run_pipeline(
    backend, repo_dir, params: SegmentOptions, image: np.ndarray, cfg: ServerConfig | None = None
):
    pipe = build_pipeline(backend, ModelRepository.load(repo_dir), cfg or ServerConfig())
    try:
        return asyncio.run(pipe.run(params, image, RequestContext())), pipe
    finally:
        pipe.close()


def pair_ious(ours: list, ref: list) -> np.ndarray:
    """Each of our masks paired with its best-IoU reference mask (masks as bool arrays or COCO RLEs)."""
    from pycocotools import mask as mask_utils

    def rles(masks):
        return [
            m if isinstance(m, dict) else mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            for m in masks
        ]

    if not ours or not ref:
        return np.zeros(0)
    iou = mask_utils.iou(rles(ours), rles(ref), [0] * len(ref))
    return np.asarray(iou).max(axis=1)


def crisp(backend):
    """Scale the SAM2 mask/IoU heads of a torch backend: random weights otherwise give logits within
    +-0.3, i.e. stability 0 for every mask. Scaled, masks are crisp like a trained SAM's and survive
    real thresholds."""
    import torch

    dec = backend.mods["sam2_image_encoder"].model.sam_mask_decoder
    with torch.no_grad():
        for mlp in dec.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 1000
        dec.iou_prediction_head.layers[-1].weight *= 20
    return backend


def decoded(result) -> list[np.ndarray]:
    return [amg.decode_rle(m.rle) for m in result.masks]


def rles(result) -> list[dict]:
    return [{"size": m.rle["size"], "counts": m.rle["counts"].encode("ascii")} for m in result.masks]


@pytest.fixture(scope="session")
def ort_backend(tiny_repo):
    from seglabel_server.backends import create_backend

    return create_backend("onnxruntime", ModelRepository.load(tiny_repo))


@pytest.fixture(scope="session")
def torch_backend(tiny_repo):
    from seglabel_server.backends import create_backend

    # The host mask path: these tests compare runtimes (test_device_path.py compares the paths).
    return create_backend("torch", ModelRepository.load(tiny_repo), mask_path="host")
