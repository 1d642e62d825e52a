"""Export: the model repository, its manifest, parity, and the checkpoint loaders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import open_clip
import pytest
import torch
from seglabel_export import cli, sources
from seglabel_export.exporter import DECODER_NS, DECODER_PS, export_repository
from seglabel_export.sources import CheckpointError


def test_repository_layout_and_manifest(tiny_repo):
    manifest = json.loads((tiny_repo / "manifest.json").read_text())
    assert manifest["random_weights"] is True
    models = manifest["models"]
    assert set(models) == {
        "sam2_image_encoder",
        "sam2_mask_decoder",
        "sam2_track_conditioner",
        "sam2_track_decoder",
        "sam2_memory_encoder",
        "clip_image_encoder",
        "clip_text_encoder",
    }
    for name, entry in models.items():
        assert entry["path"] == f"{name}/1/model.onnx" and (tiny_repo / entry["path"]).is_file()
        assert entry["opset"] == 17 and entry["parity_worst_rel_l2"] <= 1e-4
    dec = {i["name"]: i for i in models["sam2_mask_decoder"]["inputs"]}
    assert dec["point_coords"]["shape"] == ["num_prompts", "num_points", 2]
    assert dec["point_labels"]["dtype"] == "int32"
    outs = {o["name"]: o["shape"] for o in models["sam2_mask_decoder"]["outputs"]}
    assert dec["min_iou"] == {"name": "min_iou", "shape": [1], "dtype": "float32"}
    assert outs["iou_predictions"] == ["num_prompts", 3]
    assert outs["kept"] == ["num_kept"]
    assert outs["masks"] == ["num_kept", 3, 64, 64] and outs["single_mask"] == ["num_kept", 1, 64, 64]
    enc_out = {o["name"]: o["shape"] for o in models["sam2_image_encoder"]["outputs"]}
    assert enc_out["image_embed"] == ["batch", 32, 16, 16]
    assert models["clip_text_encoder"]["inputs"][0] == {
        "name": "input_ids",
        "shape": ["batch", 77],
        "dtype": "int32",
    }
    sam = manifest["sam2"]
    assert sam["sha256"] == sources.sha256_file(tiny_repo / sam["spec"]["checkpoint"])
    assert sam["spec"]["random_weights"] and manifest["clip"]["logit_scale"] == pytest.approx(
        1 / 0.07, rel=1e-4
    )
    assert (tiny_repo / manifest["clip"]["tokenizer"]).is_file()


def test_a_repository_without_onnx_describes_the_same_inputs(tiny_repo, tmp_path):
    """write_onnx=False (the torch backend's repositories, e.g. the GPU script's): every model's
    inputs carry the ONNX entries' names, shapes with their named dynamic axes, and dtypes (the
    compiled engines' warm-up and `seglabel-export aot` read them)."""
    manifest = export_repository(
        tmp_path / "torch_only", "tiny", "tiny", write_onnx=False, log=lambda m: None
    )
    onnx = json.loads((tiny_repo / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        assert entry["inputs"] == onnx["models"][name]["inputs"], name
    assert manifest["models"]["sam2_mask_decoder"]["inputs"][3]["shape"] == ["num_prompts", "num_points", 2]


def test_parity_covers_every_output_and_prompt_shape(tiny_repo):
    rows = json.loads((tiny_repo / "manifest.json").read_text())["parity"]
    assert all(r["ok"] and r["rel_l2"] <= 1e-4 for r in rows)
    cases = {(r["model"], r["case"]) for r in rows}
    for src in ("random-b2", "photo"):
        for n in DECODER_NS:
            for p in DECODER_PS:
                assert ("sam2_mask_decoder", f"{src} N={n} P={p}") in cases
            if n > 1:  # a min_iou that keeps about half of the prompts
                assert ("sam2_mask_decoder", f"{src} N={n} P={DECODER_PS[0]} min_iou") in cases
    outputs = {(r["model"], r["output"]) for r in rows}
    # encoder 3, decoder 6, the video path's conditioner 1, track decoder 4, memory encoder 1, clip 1 + 1
    assert len(outputs) == 3 + 6 + 1 + 4 + 1 + 1 + 1
    video = json.loads((tiny_repo / "manifest.json").read_text())["sam2_video"]
    assert (
        video["tracking"]["num_maskmem"] == 2 and video["tracking"]["image_size"] == 256
    )  # the tiny model's


def test_verify_reruns_parity_on_fresh_inputs(tiny_repo, capsys):
    assert (
        cli.main(["verify", str(tiny_repo), "--seed", "123", "--decoder-n", "1,7", "--decoder-p", "1,3"]) == 0
    )
    out = capsys.readouterr().out
    assert "0 failed" in out and "sam2_mask_decoder" in out


def test_verify_fails_on_a_tampered_graph(tiny_repo, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_repo, bad)
    # Perturb the CLIP text projection in the graph: parity must notice the wrong weights.
    import onnx

    model = onnx.load(bad / "clip_text_encoder/1/model.onnx")
    for init in model.graph.initializer:
        if init.name.endswith("text_projection") or "text_projection" in init.name:
            arr = onnx.numpy_helper.to_array(init)
            arr = arr + 0.05 * np.random.default_rng(0).standard_normal(arr.shape).astype(arr.dtype)
            init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
            break
    else:
        pytest.fail("text_projection initializer not found")
    onnx.save(model, bad / "clip_text_encoder/1/model.onnx")
    assert cli.main(["verify", str(bad), "--decoder-n", "1", "--decoder-p", "1"]) == 1
    assert "NO" in capsys.readouterr().out


def test_sam2_official_format_loads_through_the_user_path(tmp_path):
    """A checkpoint in sam2's own format ({"model": state_dict}) of the real hiera-tiny
    architecture, named like the official file, loads with torch.load(weights_only=True)."""
    torch.manual_seed(3)
    spec = sources.resolve_sam2("random:tiny", tmp_path / "gen")
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    shutil.move(spec.checkpoint, official)
    user = sources.resolve_sam2(str(official), tmp_path)
    assert user.config == "configs/sam2.1/sam2.1_hiera_t.yaml" and not user.random_weights
    model = sources.build_sam2(user)
    ref = torch.load(official, weights_only=True)["model"]
    for k in ("image_encoder.trunk.patch_embed.proj.weight", "sam_mask_decoder.iou_token.weight"):
        assert torch.equal(model.state_dict()[k], ref[k])


def _tiny_clip(quick_gelu: bool) -> torch.nn.Module:
    torch.manual_seed(4)
    return open_clip.CLIP(**sources.CLIP_TINY_CONFIG, quick_gelu=quick_gelu).eval()


def _same_outputs(a, b):
    img = torch.randn(2, 3, 224, 224)
    txt = torch.randint(0, 49407, (2, 77))
    with torch.no_grad():
        assert torch.allclose(a.encode_image(img), b.encode_image(img), atol=1e-6)
        assert torch.allclose(a.encode_text(txt), b.encode_text(txt), atol=1e-6)


def test_openai_clip_state_dict_loads_with_quickgelu(tmp_path):
    model = _tiny_clip(quick_gelu=True)
    sd = {k: v.half() if v.ndim >= 2 else v for k, v in model.state_dict().items()}  # OpenAI: partly fp16
    sd |= {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }
    path = tmp_path / "ViT-B-32.pt"
    torch.save(sd, path)
    spec = sources.resolve_clip(str(path), tmp_path)
    assert spec.checkpoint_format == "openai" and spec.model_config["quick_gelu"] is True
    assert spec.model_config["vision_cfg"]["width"] == 64 and spec.model_config["text_cfg"]["layers"] == 2
    loaded = sources.build_clip(spec)
    ref = open_clip.CLIP(**sources.CLIP_TINY_CONFIG, quick_gelu=True).eval()
    ref.load_state_dict({k: v.float() for k, v in sd.items() if k in ref.state_dict()})
    _same_outputs(loaded, ref)


def test_openai_torchscript_archive_loads(tmp_path):
    model = _tiny_clip(quick_gelu=True)
    traced = torch.jit.trace_module(model, {"encode_image": torch.randn(1, 3, 224, 224)})
    path = tmp_path / "ViT-B-32.pt"
    traced.save(str(path))
    spec = sources.resolve_clip(str(path), tmp_path)
    assert spec.checkpoint_format == "openai"
    _same_outputs(sources.build_clip(spec), model)


def test_open_clip_checkpoint_loads_by_model_name(tmp_path):
    cfg_path = tmp_path / "seglabel-tiny-test.json"
    cfg_path.write_text(json.dumps(sources.CLIP_TINY_CONFIG))
    open_clip.add_model_config(cfg_path)
    model = _tiny_clip(quick_gelu=False)
    path = tmp_path / "open_clip_pytorch_model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    spec = sources.resolve_clip(str(path), tmp_path, model_name="seglabel-tiny-test")
    assert spec.checkpoint_format == "open_clip"
    _same_outputs(sources.build_clip(spec), model)


def _no_partial_dirs(parent):
    return not [p for p in parent.iterdir() if ".partial-" in p.name]


def test_truncated_checkpoint_fails_clearly_and_writes_nothing(tmp_path):
    spec = sources.resolve_sam2("tiny", tmp_path / "gen")
    data = open(spec.checkpoint, "rb").read()
    bad = tmp_path / "sam2.1_hiera_tiny.pt"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "models"
    out.parent.mkdir()
    with pytest.raises(CheckpointError, match=r"sam2\.1_hiera_tiny\.pt: not a readable torch checkpoint"):
        export_repository(out, str(bad), None, log=lambda m: None)
    assert not out.exists() and _no_partial_dirs(out.parent)


def test_mismatched_checkpoint_names_the_file_and_the_problem(tmp_path):
    spec = sources.resolve_sam2("tiny", tmp_path / "gen")  # shrunk weights under a full-size name
    wrong = tmp_path / "sam2.1_hiera_tiny.pt"
    shutil.copyfile(spec.checkpoint, wrong)
    out = tmp_path / "out" / "models"
    out.parent.mkdir()
    with pytest.raises(
        CheckpointError, match=r"sam2\.1_hiera_tiny\.pt: does not fit SAM2\.1 .*shape mismatch"
    ):
        export_repository(out, str(wrong), None, log=lambda m: None)
    assert not out.exists() and _no_partial_dirs(out.parent)
    assert cli.main(["export", str(out), "--sam2", str(wrong), "--clip", "none"]) == 2


def test_not_a_clip_checkpoint(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.save({"model": {"a": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="ViT-B-32.pt: not a CLIP ViT checkpoint"):
        sources.resolve_clip(str(path), tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        sources.resolve_clip(str(tmp_path / "missing.pt"), tmp_path)


def test_unknown_sizes_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="unknown SAM2.1 size"):
        sources.resolve_sam2("random:huge", tmp_path)
    with pytest.raises(CheckpointError, match="cannot tell the SAM2.1 size"):
        sources.resolve_sam2(str(tmp_path / "weights.pt"), tmp_path)


def test_trt_says_plainly_when_tensorrt_or_gpu_is_missing(tiny_repo, capsys):
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime as cudart

        if cudart.cudaGetDeviceCount()[1] > 0:
            pytest.skip("TensorRT and a GPU are present: engines would really be built")
    except ImportError:
        pass
    assert cli.main(["trt", str(tiny_repo)]) == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err.lower() or "gpu" in err.lower()


def _runs_per_mask(model, photo) -> list[int]:
    """Column-major runs of sam2's own predictor's masks for a 4 x 4 grid of clicks (3 each)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(model)
    s = model.image_size
    predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    with torch.no_grad():
        predictor.set_image(photo)
        h, w = photo.shape[:2]
        pts = (np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) + 0.5) / 4 * (w, h)
        masks, _, _ = predictor.predict(point_coords=pts[:, None], point_labels=np.ones((16, 1)))
    flat = (masks.reshape(-1, h, w) > 0).transpose(0, 2, 1).reshape(48, -1)
    return [int(np.count_nonzero(f[1:] != f[:-1])) + 1 for f in flat]


def test_smooth_masks_gives_trained_like_run_counts(tmp_path, photo):
    """The benchmark input (``random-smooth:<size>``): the same architecture and checkpoint format,
    weight values changed so that masks follow the photo's colour regions instead of noise: many
    times fewer runs per mask than the random weights it starts from, and not all empty or full."""
    spec = sources.resolve_sam2("tiny", tmp_path)
    torch.manual_seed(0)
    random_model = sources.build_sam2(spec)
    torch.manual_seed(0)
    smooth_model = sources.smooth_masks(sources.build_sam2(spec))
    ragged, smooth = _runs_per_mask(random_model, photo), _runs_per_mask(smooth_model, photo)
    assert np.median(smooth) * 5 < np.median(ragged), (np.median(smooth), np.median(ragged))
    assert np.median(smooth) > 2  # masks with edges, not blank frames
    # The source writes the transformed weights in the official format and says so.
    full = sources.resolve_sam2("random-smooth:tiny", tmp_path / "full")
    assert full.random_weights and "smooth_masks" in full.architecture
    assert full.config == sources.SAM2_CONFIGS["tiny"] and not full.overrides
    sd = torch.load(full.checkpoint, weights_only=True)["model"]
    assert not sd["image_encoder.trunk.pos_embed_window"].any()
    assert not sd["image_encoder.trunk.blocks.0.mlp.layers.1.weight"].any()
