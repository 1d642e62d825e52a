import json

import pytest
from seglabel_server.service.config import config_from_args


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
    assert cfg.stage_configs()["decoder"].max_batch_size == 16  # CPU
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
    from seglabel_server.models.repository import FORMAT_VERSION, ModelRepository

    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION - 1, "models": {}}))
    with pytest.raises(ModelError, match="export the models again"):
        ModelRepository.load(tmp_path)


def test_seglabel_ray_takes_the_servers_flags_and_never_exits_on_a_bad_setting(tmp_path):
    """seglabel-ray's parser carries every ServerConfig flag (from the same dataclass) beside Ray's
    own; a bad setting is a ConfigError (a replica raises it, never exits its process)."""
    import argparse

    from seglabel_server.service.config import (
        ConfigError,
        ServerConfig,
        add_flags,
        apply_settings,
        settings_from_args,
    )

    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"pipeline": {"top_k": 2}, "backend": "onnxruntime"}))
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=1)
    add_flags(ap, exclude=frozenset({"port", "http_port"}))
    args = ap.parse_args(["--replicas", "2", "--config", str(path), "--models", "/m", "--max-batch-clip", "4",
                          "--vocabulary", "cat,dog", "--no-batching"])  # fmt: skip
    data = settings_from_args(args)
    assert data == {"pipeline": {"top_k": 2, "vocabulary": ["cat", "dog"]}, "backend": "onnxruntime",
                    "models": "/m", "max_batch": {"clip": 4}, "batching": False}  # fmt: skip
    json.dumps(data)  # what Ray hands the replicas
    cfg = ServerConfig()
    apply_settings(cfg, data, "args.server")
    assert cfg.models == "/m" and cfg.pipeline.vocabulary == ("cat", "dog") and cfg.max_batch == {"clip": 4}
    with pytest.raises(ConfigError, match=r"args.server: unknown settings \['prot'\]"):
        apply_settings(ServerConfig(), {"prot": 1}, "args.server")
    with pytest.raises(SystemExit):  # the parser refuses the server's own --port here: it is Ray's
        ap.parse_args(["--port", "1"])


def test_backend_config_is_built_from_the_flags():
    cfg, _ = config_from_args(["--backend", "torch", "--precision", "bf16", "--ort-io-binding", "off",
                               "--max-batch-decoder", "64", "--mask-path", "host"])  # fmt: skip
    b = cfg.backend_config()
    assert (b.backend, b.precision, b.io_binding, b.mask_path) == ("torch", "bf16", False, "host")
    assert b.max_batches["sam2_mask_decoder"] == 64 and b.max_batches["clip_image_encoder"] == 32
