import json

import pytest
from seglabel_server.config import config_from_args


def test_flags_override_file_and_defaults(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps(
            {
                "port": 6000,
                "max_batch": {"clip": 8},
                "pipeline": {"points_per_side": 24, "vocabulary": ["a", "b"]},
            }
        )
    )
    cfg, _ = config_from_args(["--config", str(path), "--port", "7000", "--no-batching", "--max-masks", "5"])
    assert cfg.port == 7000 and cfg.max_batch["clip"] == 8 and cfg.batching is False
    assert cfg.pipeline.points_per_side == 24 and cfg.pipeline.max_masks == 5
    assert cfg.pipeline.vocabulary == ("a", "b")
    assert cfg.host == "127.0.0.1" and cfg.backend == "onnxruntime" and cfg.models == "models"
    assert cfg.stage_configs()["clip"].max_batch_size == 8


def test_unknown_file_settings_are_refused(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"prot": 1}))
    with pytest.raises(SystemExit, match="unknown settings"):
        config_from_args(["--config", str(path)])


def test_decoder_batch_defaults_by_device_and_can_be_set():
    cfg, _ = config_from_args([])
    assert cfg.stage_configs()["decoder"].max_batch_size == 32  # CPU
    cfg, _ = config_from_args(["--device", "cuda"])
    assert cfg.stage_configs()["decoder"].max_batch_size == 128
    cfg, _ = config_from_args(["--max-batch-decoder", "64"])
    assert cfg.stage_configs()["decoder"].max_batch_size == 64
    cfg, _ = config_from_args(["--max-batch-ocr-rec", "8", "--max-batch-depth", "3"])  # flags use hyphens
    assert (
        cfg.stage_configs()["ocr_rec"].max_batch_size == 8
        and cfg.stage_configs()["depth"].max_batch_size == 3
    )


def test_repository_of_another_format_is_refused_with_the_way_out(tmp_path):
    from seglabel_server.errors import ModelError
    from seglabel_server.repository import FORMAT_VERSION, ModelRepository

    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION - 1, "models": {}}))
    with pytest.raises(ModelError, match="export the models again"):
        ModelRepository.load(tmp_path)
