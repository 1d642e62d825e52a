"""Depth Anything V2 export: parity rows, the official-format and Hugging Face loaders, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from seglabel_export import sources
from seglabel_export.exporter import export_model
from seglabel_export.parity import rel_l2
from seglabel_export.sources import CheckpointError
from seglabel_server.models import images
from seglabel_server.models.torch_modules.depth import (
    DEPTH_MEAN,
    DEPTH_SIZES,
    DEPTH_STD,
    build_depth,
    depth_config,
    hf_to_official,
)
from seglabel_server.models.torch_modules.towers import DepthEstimator

# Keys of the official repository's DepthAnythingV2.state_dict() (Depth-Anything-V2, dpt.py + dinov2.py).
OFFICIAL_KEYS = [
    "pretrained.cls_token",
    "pretrained.pos_embed",
    "pretrained.mask_token",
    "pretrained.patch_embed.proj.weight",
    "pretrained.blocks.0.attn.qkv.weight",
    "pretrained.blocks.0.ls1.gamma",
    "pretrained.blocks.3.mlp.fc2.bias",
    "pretrained.norm.weight",
    "depth_head.projects.0.weight",
    "depth_head.resize_layers.3.weight",
    "depth_head.scratch.layer4_rn.weight",
    "depth_head.scratch.refinenet1.resConfUnit2.conv2.bias",
    "depth_head.scratch.refinenet4.out_conv.weight",
    "depth_head.scratch.output_conv1.weight",
    "depth_head.scratch.output_conv2.2.bias",
]


def test_depth_parity_rows_in_the_manifest(scene_repo):
    manifest = json.loads((scene_repo / "manifest.json").read_text())
    rows = [r for r in manifest["parity"] if r["model"] == "depth_estimator"]
    assert {r["case"] for r in rows} == {"random-b2", "photo astronaut.jpg", "photo coffee.jpg"}
    assert all(r["ok"] and r["rel_l2"] <= 1e-4 for r in rows)
    d = manifest["depth"]
    assert (
        d["image_size"] == 56 and d["spec"]["checkpoint_format"] == "official" and d["spec"]["random_weights"]
    )
    entry = manifest["models"]["depth_estimator"]
    assert entry["inputs"][0] == {"name": "images", "shape": ["batch", 3, 56, 56], "dtype": "float32"}
    assert entry["outputs"][0]["shape"] == ["batch", 56, 56]


def _outputs(model, x):
    with torch.no_grad():
        return model(pixel_values=x).predicted_depth.numpy()


def test_official_format_checkpoint_loads_through_the_user_path(tmp_path):
    """A checkpoint written as the official repository saves it loads through ``--depth FILE`` and
    computes exactly what the model it was written from computes."""
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(3)
    original = DepthAnythingForDepthEstimation(depth_config("tiny", 56)).eval()
    sd = hf_to_official(original.state_dict(), DEPTH_SIZES["tiny"]["layers"])
    assert set(OFFICIAL_KEYS) <= set(sd)
    assert not any(k.startswith(("backbone.", "neck.", "head.")) for k in sd)
    path = tmp_path / "depth_anything_v2_tiny.pth"
    torch.save(sd, path)
    spec = sources.resolve_depth(str(path), tmp_path)
    assert (spec.size, spec.image_size, spec.checkpoint_format) == ("tiny", 56, "official")
    x = torch.randn(2, 3, 56, 56)
    np.testing.assert_array_equal(_outputs(build_depth(spec), x), _outputs(original, x))


def test_hugging_face_folder_loads(tmp_path):
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(4)
    original = DepthAnythingForDepthEstimation(depth_config("tiny", 56)).eval()
    original.save_pretrained(tmp_path / "hf")
    spec = sources.resolve_depth(str(tmp_path / "hf"), tmp_path)
    assert spec.checkpoint_format == "hf" and spec.image_size == 56
    x = torch.randn(1, 3, 56, 56)
    np.testing.assert_allclose(_outputs(build_depth(spec), x), _outputs(original, x), rtol=0, atol=0)


def test_truncated_and_mismatched_depth_checkpoints_name_the_file_and_the_problem(tmp_path):
    spec = sources.resolve_depth("tiny", tmp_path / "ck")
    data = open(spec.checkpoint, "rb").read()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: not a readable torch checkpoint"):
        sources.resolve_depth(str(bad), tmp_path)

    sd = torch.load(spec.checkpoint, weights_only=True)
    sd["depth_head.projects.0.weight"] = torch.zeros(3, 3, 1, 1)
    del sd["pretrained.blocks.0.ls1.gamma"]
    mism = tmp_path / "mismatched.pth"
    torch.save(sd, mism)
    s = sources.resolve_depth(str(mism), tmp_path)
    with pytest.raises(CheckpointError) as err:
        build_depth(s)
    msg = str(err.value)
    assert "mismatched.pth" in msg and "missing keys" in msg and "shape mismatches" in msg
    assert "layer_scale1" in msg and "projection.weight (3, 3, 1, 1)" in msg

    other = tmp_path / "not_depth.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, other)
    with pytest.raises(CheckpointError, match="not_depth.pth: not a Depth Anything V2 checkpoint"):
        sources.resolve_depth(str(other), tmp_path)
    with pytest.raises(CheckpointError, match="unknown Depth Anything V2 size 'vitx'"):
        sources.resolve_depth("random:vitx", tmp_path)


@pytest.mark.slow  # a full-size export
def test_full_size_vits_random_weights_export_parity(tmp_path):
    """The released small model's architecture (ViT-S/14 + DPT, 518 px) exports with the proof."""
    import onnxruntime as ort
    from seglabel_api import sample_image_bytes

    spec = sources.resolve_depth("random:vits", tmp_path / "ck")
    assert spec.architecture == "depth-anything-v2-vits" and spec.image_size == 518
    module = DepthEstimator(build_depth(spec)).eval()
    entry = export_model(
        tmp_path / "repo", "depth_estimator", module, {"images": torch.zeros(1, 3, 518, 518)},
        {"images": {0: "batch"}, "depth": {0: "batch"}},
    )  # fmt: skip
    sess = ort.InferenceSession(str(tmp_path / "repo" / entry["path"]), providers=["CPUExecutionProvider"])
    photo = images.decode_image(sample_image_bytes("coffee.jpg"))
    cases = {
        "random": np.random.default_rng(0).standard_normal((1, 3, 518, 518)).astype(np.float32),
        "photo": images.depth_preprocess(photo, 518, DEPTH_MEAN, DEPTH_STD)[None],
    }
    for name, x in cases.items():
        with torch.no_grad():
            ref = module(torch.from_numpy(x)).numpy()
        ours = sess.run(None, {"images": x})[0]
        assert ours.shape == (1, 518, 518)
        assert rel_l2(ours, ref) <= 1e-4, name
