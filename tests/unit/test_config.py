import json

import pytest
from seglabel_server.config import config_from_args


def test_flags_override_file_and_defaults(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(
        json.dumps(
            {"port": 6000, "max_batch_clip": 8, "pipeline": {"points_per_side": 24, "vocabulary": ["a", "b"]}}
        )
    )
    cfg, _ = config_from_args(["--config", str(path), "--port", "7000", "--no-batching", "--max-masks", "5"])
    assert cfg.port == 7000 and cfg.max_batch_clip == 8 and cfg.batching is False
    assert cfg.pipeline.points_per_side == 24 and cfg.pipeline.max_masks == 5
    assert cfg.pipeline.vocabulary == ("a", "b")
    assert cfg.host == "127.0.0.1" and cfg.backend == "onnxruntime" and cfg.models == "models"
    assert cfg.stage_configs()["clip"].max_batch_size == 8


def test_unknown_file_settings_are_refused(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"prot": 1}))
    with pytest.raises(SystemExit, match="unknown settings"):
        config_from_args(["--config", str(path)])
