"""Triton model configuration: config.pbtxt for every ONNX model, parsed into Triton's own
ModelConfig message (tritonclient) and matched against each graph."""

from __future__ import annotations

import json
import shutil

from google.protobuf import text_format
from seglabel_export import cli
from seglabel_export.triton import model_config_module, validate


def test_every_model_has_a_config_that_triton_parses_and_that_matches_its_graph(scene_repo):
    manifest = json.loads((scene_repo / "manifest.json").read_text())
    mc = model_config_module()
    assert len(manifest["models"]) == 11  # SAM2 2 + its video path 3 + CLIP 2 + depth 1 + OCR 3
    for name in manifest["models"]:
        config = text_format.Parse((scene_repo / name / "config.pbtxt").read_text(), mc.ModelConfig())
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert validate(scene_repo, name) == [], name
    enc = text_format.Parse(
        (scene_repo / "sam2_image_encoder" / "config.pbtxt").read_text(), mc.ModelConfig()
    )
    assert (
        enc.max_batch_size == 4
        and list(enc.input[0].dims) == [3, 256, 256]
        and enc.HasField("dynamic_batching")
    )
    dec = text_format.Parse((scene_repo / "sam2_mask_decoder" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert dec.max_batch_size == 0 and list(dec.input[3].dims) == [-1, -1, 2]  # point_coords
    rec = text_format.Parse((scene_repo / "ocr_rec" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert rec.max_batch_size == 32 and list(rec.input[0].dims) == [3, 48, -1]


def test_a_config_that_disagrees_with_its_graph_is_reported(scene_repo, tmp_path, capsys):
    repo = tmp_path / "repo"
    shutil.copytree(scene_repo, repo)
    path = repo / "clip_text_encoder" / "config.pbtxt"
    path.write_text(path.read_text().replace("TYPE_INT32", "TYPE_FP32").replace('"text_embeds"', '"embeds"'))
    problems = validate(repo, "clip_text_encoder")
    assert any("TYPE_FP32 vs graph TYPE_INT32" in p for p in problems)
    assert any("outputs ['embeds'] vs graph ['text_embeds']" in p for p in problems)
    # `seglabel-export triton` writes them again from the manifest: valid again
    assert cli.main(["triton", str(repo)]) == 0
    assert "valid against ModelConfig and the graphs" in capsys.readouterr().out
