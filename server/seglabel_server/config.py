"""One typed config object, built once at start-up from flags (and an optional JSON file)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from seglabel_server.pipeline import PipelineConfig
from seglabel_server.scheduler import StageConfig


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    models: str = "models"
    backend: str = "onnxruntime"
    device: str = "cpu"
    precision: str = "fp32"
    threads: int = 0  # onnxruntime intra-op threads (0: one per core)
    cpu_threads: int = 0  # pipeline's numpy/PIL pool (filters, upsampling, RLE, crops); 0: one per core
    load_clip: bool = True
    # scheduler
    batching: bool = True
    max_queue_delay_ms: float = 0.0
    max_batch_encoder: int = 4
    # 0: 32 prompts on the CPU (ONNX Runtime: the same time per prompt at 32-128, measured, while the
    # memory it keeps grows ~45 MB per upscaled prompt), 128 on a GPU.
    max_batch_decoder: int = 0
    max_batch_clip: int = 64
    max_batch_text: int = 32  # the text tower is slower per row past ~16-32 on CPU (measured)
    max_queue: int = 256
    max_inflight: int = 64
    # inputs
    max_image_bytes: int = 32 << 20
    max_image_pixels: int = 40_000_000
    upload_cache_mb: int = 512
    grace_s: float = 5.0
    metrics_port: int = 0
    warmup: bool = True
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def decoder_batch(self) -> int:
        return self.max_batch_decoder or (32 if self.device == "cpu" else 128)

    def stage_configs(self) -> dict[str, StageConfig]:
        d, q = self.max_queue_delay_ms, self.max_queue
        return {
            "encoder": StageConfig(self.max_batch_encoder, d, q),
            "decoder": StageConfig(self.decoder_batch(), d, q),
            "clip": StageConfig(self.max_batch_clip, d, q),
            "text": StageConfig(self.max_batch_text, d, q),
        }

    def to_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglabel-server", description="SAM2 + CLIP segment-and-label gRPC server"
    )
    p.add_argument("--config", help="JSON file with ServerConfig fields (flags given explicitly win)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--models", help="model repository written by seglabel-export (default ./models)")
    p.add_argument("--backend", choices=["onnxruntime", "torch", "tensorrt"])
    p.add_argument("--device", help="onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda[:N]; tensorrt: cuda[:N]")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="torch backend autocast on CUDA")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (0: one per core)")
    p.add_argument("--cpu-threads", type=int, help="threads for post-processing and crops (0: one per core)")
    p.add_argument(
        "--no-clip",
        dest="load_clip",
        action="store_const",
        const=False,
        help="do not load CLIP (segmentation only)",
    )
    p.add_argument(
        "--no-batching",
        dest="batching",
        action="store_const",
        const=False,
        help="never merge work of different requests into one batch",
    )
    p.add_argument("--max-queue-delay-ms", type=float)
    for stage in ("encoder", "decoder", "clip", "text"):
        p.add_argument(f"--max-batch-{stage}", type=int)
    p.add_argument("--max-queue", type=int)
    p.add_argument("--max-inflight", type=int)
    p.add_argument("--max-image-bytes", type=int)
    p.add_argument("--max-image-pixels", type=int)
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (0: off)")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False)
    p.add_argument("--points-per-side", type=int)
    p.add_argument("--points-per-batch", type=int)
    p.add_argument("--pred-iou-thresh", type=float)
    p.add_argument("--stability-score-thresh", type=float)
    p.add_argument("--box-nms-thresh", type=float)
    p.add_argument("--max-masks", type=int)
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    args = build_parser().parse_args(argv)
    cfg = ServerConfig()
    if args.config:
        data = json.loads(Path(args.config).read_text())
        pipe = data.pop("pipeline", {})
        known = {f.name for f in fields(ServerConfig)}
        unknown = set(data) - known
        if unknown:
            raise SystemExit(f"{args.config}: unknown settings {sorted(unknown)}")
        for k, v in data.items():
            setattr(cfg, k, v)
        for k, v in pipe.items():
            setattr(cfg.pipeline, k, tuple(v) if isinstance(v, list) else v)
    for f in fields(ServerConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            setattr(cfg, f.name, v)
    for name in (
        "points_per_side",
        "points_per_batch",
        "pred_iou_thresh",
        "stability_score_thresh",
        "box_nms_thresh",
        "max_masks",
    ):
        v = getattr(args, name)
        if v is not None:
            setattr(cfg.pipeline, name, v)
    return cfg, args
