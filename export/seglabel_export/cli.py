"""``seglabel-export``: export / verify / trt.

seglabel-export export DIR --sam2 SOURCE [--clip SOURCE|none] [--depth SOURCE] [--ocr yes|no]
seglabel-export verify DIR                                      # parity again, fresh inputs
seglabel-export triton DIR                                      # (re)write + validate config.pbtxt
seglabel-export trt DIR [--fp16]                                # TensorRT engines (GPU + tensorrt)
seglabel-export aot DIR [--device cuda] [--precision bf16]      # AOTInductor packages (torch serving)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="seglabel-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="export SAM2.1 + CLIP to an ONNX model repository")
    ex.add_argument("out", help="model repository folder to write (replaced atomically)")
    ex.add_argument(
        "--sam2",
        required=True,
        help="official checkpoint file (sam2.1_hiera_*.pt), random:<tiny|small|base_plus|large>, "
        "random-smooth:<size> (random weights whose masks have trained-like run counts, for benchmarks), "
        "tiny or tiny-smooth",
    )
    ex.add_argument(
        "--sam2-config",
        choices=["tiny", "small", "base_plus", "large"],
        help="SAM2.1 size when the file name does not say",
    )
    ex.add_argument(
        "--clip",
        default="random:ViT-B-32",
        help="OpenAI / open_clip checkpoint file, random:<open_clip model>, tiny, or none",
    )
    ex.add_argument(
        "--clip-model", default="ViT-B-32", help="open_clip model name of an open_clip checkpoint"
    )
    ex.add_argument(
        "--depth",
        default="none",
        help="Depth Anything V2: official checkpoint file (depth_anything_v2_vits.pth), a Hugging Face "
        "model folder, random:<vits|vitb|vitl>, tiny, or none",
    )
    ex.add_argument(
        "--ocr",
        choices=["auto", "yes", "no"],
        default="auto",
        help="copy rapidocr's PP-OCR graphs into the repository (auto: when rapidocr_onnxruntime is installed)",
    )
    ex.add_argument("--opset", type=int, default=17)
    ex.add_argument("--seed", type=int, default=0, help="seed for random weights and parity inputs")
    ex.add_argument("--decoder-n", type=_ints, default=(1, 7, 256), help="prompt counts checked for parity")
    ex.add_argument("--decoder-p", type=_ints, default=(1, 2, 3), help="points per prompt checked for parity")

    ve = sub.add_parser("verify", help="rerun parity on fresh random inputs; non-zero exit on failure")
    ve.add_argument("dir")
    ve.add_argument("--seed", type=int, default=None, help="default: a fresh seed from the clock")
    ve.add_argument("--decoder-n", type=_ints, default=(1, 7, 256))
    ve.add_argument("--decoder-p", type=_ints, default=(1, 2, 3))

    tc = sub.add_parser("triton", help="write config.pbtxt for every ONNX model and validate it")
    tc.add_argument("dir")

    tr = sub.add_parser("trt", help="build TensorRT engines for every model of a repository")
    tr.add_argument("dir")
    tr.add_argument("--fp16", action="store_true")
    tr.add_argument("--workspace-gb", type=float, default=4.0)
    tr.add_argument("--max-batch", type=int, default=8, help="encoder images per call")
    tr.add_argument("--max-prompts", type=int, default=256, help="decoder prompts per call")
    tr.add_argument("--max-crops", type=int, default=64, help="CLIP crops/texts per call")

    ao = sub.add_parser(
        "aot", help="AOTInductor packages for `seglabel-server --backend torch --torch-compile aot`"
    )
    ao.add_argument("dir")
    ao.add_argument("--device", default="cuda", help="cuda[:N] or cpu: the device that serves them")
    ao.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    ao.add_argument(
        "--decoder-layout",
        choices=["multi-image", "per-image"],
        help="the SAM2 decoder's (default: the server's, multi-image on CUDA, per-image on the CPU)",
    )
    ao.add_argument("--models", default="", help="comma-separated models (default: every torch-run model)")
    ao.add_argument("--autotune", action="store_true", help="inductor max_autotune (slower to build)")

    args = parser.parse_args(argv)
    if args.cmd == "export":
        return _export(args)
    if args.cmd == "verify":
        return _verify(args)
    if args.cmd == "triton":
        return _triton(args)
    if args.cmd == "aot":
        return _aot(args)
    return _trt(args)


def _aot(args) -> int:
    from seglabel_server.errors import ModelError

    from seglabel_export.aoti import build_packages

    t0 = time.perf_counter()
    try:
        built = build_packages(
            args.dir,
            device=args.device,
            precision=args.precision,
            decoder_layout=args.decoder_layout,
            models=[m for m in args.models.split(",") if m] or None,
            autotune=args.autotune,
            log=lambda m: print(m, flush=True),
        )
    except (ValueError, ModelError) as exc:
        print(f"seglabel-export aot: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(built, indent=2))
    print(f"{len(built)} AOTInductor packages in {time.perf_counter() - t0:.1f}s", flush=True)
    return 0


def _triton(args) -> int:
    """config.pbtxt for every ONNX model, then each parsed into Triton's ModelConfig (tritonclient)
    and checked against its graph."""
    from seglabel_server.models.repository import ModelRepository

    from seglabel_export.triton import validate, write_configs

    repo = ModelRepository.load(args.dir)
    names = write_configs(repo.root, repo.manifest)
    try:
        problems = [p for name in names for p in validate(repo.root, name)]
    except ImportError as exc:
        print(
            f"wrote config.pbtxt for {', '.join(names)}; not validated: tritonclient is not installed ({exc})"
        )
        return 0
    for p in problems:
        print(f"INVALID {p}", file=sys.stderr)
    print(f"config.pbtxt for {len(names)} models ({', '.join(names)}): "
          f"{'valid against ModelConfig and the graphs' if not problems else f'{len(problems)} problems'}")  # fmt: skip
    return 1 if problems else 0


def _export(args) -> int:
    from seglabel_export.exporter import export_repository, format_parity
    from seglabel_export.sources import CheckpointError

    t0 = time.perf_counter()
    from seglabel_export.ocr_models import OcrUnavailable, rapidocr_config

    clip = None if args.clip.lower() == "none" else args.clip
    depth = None if args.depth.lower() == "none" else args.depth
    ocr = args.ocr == "yes"
    if args.ocr == "auto":
        try:
            rapidocr_config()
            ocr = True
        except OcrUnavailable as exc:
            print(f"OCR left out: {exc}", flush=True)
    print(f"exporting to {args.out}: sam2={args.sam2} clip={clip} depth={depth} ocr={ocr}", flush=True)
    try:
        manifest = export_repository(
            args.out,
            args.sam2,
            clip,
            sam2_config=args.sam2_config,
            clip_model=args.clip_model,
            opset=args.opset,
            seed=args.seed,
            decoder_ns=args.decoder_n,
            decoder_ps=args.decoder_p,
            log=lambda m: print(m, flush=True),
            depth_source=depth,
            ocr=ocr,
        )
    except (CheckpointError, OcrUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_parity(manifest["parity"]))
    if manifest["random_weights"]:
        print(
            "WARNING: this repository holds RANDOM weights: masks and labels are meaningless "
            "(speed and parity are still real)."
        )
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _verify(args) -> int:
    from seglabel_server.models.repository import ModelRepository
    from seglabel_server.models.torch_modules.build import build_modules

    from seglabel_export.parity import default_photo, format_parity, parity_checks

    repo = ModelRepository.load(args.dir)
    seed = args.seed if args.seed is not None else int(time.time())
    print(f"verifying {repo.root} (seed {seed})", flush=True)
    rows = parity_checks(
        repo.root,
        repo.manifest,
        build_modules(repo.manifest),
        default_photo(),
        seed=seed,
        decoder_ns=args.decoder_n,
        decoder_ps=args.decoder_p,
        log=lambda m: print(m, flush=True),
    )
    print(format_parity(rows))
    return 0 if all(r["ok"] for r in rows) else 1


def _trt(args) -> int:
    from seglabel_export.trt import TensorRTUnavailable, build_engines

    try:
        built = build_engines(
            Path(args.dir),
            fp16=args.fp16,
            workspace_gb=args.workspace_gb,
            max_batch=args.max_batch,
            max_prompts=args.max_prompts,
            max_crops=args.max_crops,
            log=lambda m: print(m, flush=True),
        )
    except TensorRTUnavailable as exc:
        print(f"seglabel-export trt: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(built, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
