"""Issue 3 benchmark: the reference pipeline (sam2's SAM2AutomaticMaskGenerator, then one open_clip
call per mask, as the original application did) against ours on ONNX Runtime, in the same run, on the same weights.

Full-size architectures with RANDOM weights (speed does not depend on weight values). Random weights
keep no mask at sam2's default thresholds (stability ~0), so both pipelines run with stability and
NMS off and a predicted-IoU threshold chosen so that ~--masks masks reach CLIP in both.
Ours runs in a child process that never imports torch, so its peak RSS is its own; the child also
runs 50 consecutive requests and prints RSS along the way (memory growth check). Ours runs twice per
repeat: as served (sam2's IoU filter inside the decoder, so prompts without a candidate above it are
never upscaled) and with every prompt upscaled (IoU filter off, max_masks keeping the same masks).
Printed: times (ratios best/best and median/median), stages, fidelity against sam2's AMG (mask counts,
paired mean IoU), peak RSS.

With --smooth-models (a repository exported from ``random-smooth:<size>``), ours also runs on that
input, whose masks have trained-like run counts, and both rows are printed (runs per mask, RLE bytes
per answer, time, the upsample and crop stages).

    python scripts/bench_pipeline.py --models models [--smooth-models models-smooth] [--grid 16] [--masks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
from benchlib import choose_iou, photo


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(args) -> dict:
    """Child process: our pipeline on ONNX Runtime, no torch."""
    from seglabel_server.backends import create_backend
    from seglabel_server.models.repository import ModelRepository
    from seglabel_server.service import build_pipeline
    from seglabel_server.service.config import ServerConfig
    from seglabel_server.types import RequestContext, SegmentOptions

    image = photo(args.width, args.height)
    repo = ModelRepository.load(args.models)
    backend = create_backend("onnxruntime", repo)
    cfg = ServerConfig()
    pipe = build_pipeline(backend, repo, cfg)
    params = SegmentOptions(
        points_per_side=args.grid,
        pred_iou_thresh=args.iou,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=1000,
        return_overlay=False,
    )

    async def run(p):
        return await pipe.run(p, image, RequestContext())

    # The same masks without the decoder's IoU pre-filter: every prompt upscaled, then the top
    # --masks by predicted IoU (NMS off, so max_masks keeps exactly the masks the threshold keeps).
    unfiltered = replace(params, pred_iou_thresh=0.0, max_masks=args.masks)

    out: dict = {"runs": [], "unfiltered_runs": []}
    asyncio.run(run(SegmentOptions(prompt_type="points", points=[(10.0, 10.0, 1)])))  # warm-up
    for _ in range(args.repeat):
        for key, p in (("runs", params), ("unfiltered_runs", unfiltered)):
            t0 = time.perf_counter()
            res = asyncio.run(run(p))
            out[key].append(
                {
                    "seconds": time.perf_counter() - t0,
                    "masks": len(res.masks),
                    "labels": len(res.labels),
                    "timings_ms": res.timings,
                }
            )
            out.setdefault(f"{key}_rles", [m.rle for m in res.masks])
            out.setdefault(f"{key}_labels", [(lab.label, lab.confidence) for lab in res.labels])
    out["peak_rss_mb"] = peak_rss_mb()
    if args.leak_requests:
        small = SegmentOptions(
            points_per_side=4,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            box_nms_thresh=1.0,
            max_masks=8,
            return_overlay=True,
        )
        trace = []
        for i in range(1, args.leak_requests + 1):
            asyncio.run(run(small))
            if i == 1 or i % 10 == 0:
                trace.append((i, round(rss_mb(), 1)))
        out["rss_trace_mb"] = trace
    pipe.close()
    return out


def reference(args, iou: float) -> dict:
    """sam2's AMG, then one CLIP call per mask with PIL preprocessing (the original application's way)."""
    import torch
    from pycocotools import mask as mask_utils
    from seglabel_export.reference import PerMaskClip, reference_models, sam2_generator
    from seglabel_server.models.repository import ModelRepository
    from seglabel_server.models.vocab import DEFAULT_VOCABULARY

    torch.set_num_threads(os.cpu_count() or 2)
    image = photo(args.width, args.height)
    sam, clip = reference_models(ModelRepository.load(args.models).manifest)
    gen = sam2_generator(sam, args.grid, iou)
    labeller = PerMaskClip(clip, DEFAULT_VOCABULARY)
    with torch.inference_mode():
        t0 = time.perf_counter()
        records = gen.generate(image)
        t_amg = time.perf_counter() - t0
        labeller(image, [r["bbox"] for r in records])
        t_total = time.perf_counter() - t0
    return {
        "rles": [mask_utils.encode(np.asfortranarray(r["segmentation"].astype(np.uint8))) for r in records],
        "seconds": t_total,
        "amg_seconds": t_amg,
        "clip_seconds": t_total - t_amg,
        "masks": len(records),
    }


def choose_iou_threshold(args) -> tuple[float, int]:
    from seglabel_server.backends import create_backend
    from seglabel_server.models.repository import ModelRepository

    repo = ModelRepository.load(args.models)
    be = create_backend("onnxruntime", repo, models=repo.available_models({"sam2"}))
    return choose_iou(be, repo, photo(args.width, args.height), args.grid, args.masks)


def open_clip_labels(args, rles: list[dict]) -> list[tuple[str, float]]:
    """open_clip's zero-shot prediction on OUR crops of OUR masks (same crop function and settings,
    same templates, open_clip's tokenizer): the label check on the full-size models."""
    import open_clip
    import torch
    from seglabel_export import sources
    from seglabel_server import amg
    from seglabel_server.models import images
    from seglabel_server.models.repository import ModelRepository
    from seglabel_server.models.torch_modules.build import resolve_path
    from seglabel_server.pipeline import PipelineConfig

    repo = ModelRepository.load(args.models)
    spec = sources.ClipSpec(**repo.manifest["clip"]["spec"])
    spec.checkpoint = resolve_path(repo.manifest, spec.checkpoint)
    clip, meta, cfg = sources.build_clip(spec), repo.clip, PipelineConfig()
    image = photo(args.width, args.height)
    crops = []
    for rle in rles:
        m = amg.decode_rle(rle)
        x0, y0, x1, y1 = amg.masks_to_boxes(m[None])[0]
        box = (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
        crops.append(
            images.clip_crop(
                image, m, box, meta["image_size"], meta["mean"], meta["std"],
                cfg.crop_context, cfg.crop_background_keep,
            )
        )  # fmt: skip
    tokenizer = open_clip.get_tokenizer(spec.architecture)
    with torch.inference_mode():
        img = clip.encode_image(torch.from_numpy(np.stack(crops)), normalize=True)
        texts = [t.format(v) for v in cfg.vocabulary for t in cfg.templates]
        txt = clip.encode_text(tokenizer(texts), normalize=True).reshape(
            len(cfg.vocabulary), -1, img.shape[1]
        )
        txt = txt.mean(dim=1)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        probs = (clip.logit_scale.exp() * img @ txt.T).softmax(dim=-1)
    conf, idx = probs.max(dim=-1)
    return [(cfg.vocabulary[i], float(c)) for i, c in zip(idx.tolist(), conf.tolist())]


def fidelity(ours: list[dict], ref: list[dict]) -> tuple[int, float]:
    """(our mask count, mean IoU of each of our masks with its best reference mask)."""
    from pycocotools import mask as mask_utils

    if not ours or not ref:
        return len(ours), float("nan")
    rles = [{"size": r["size"], "counts": r["counts"].encode("ascii")} for r in ours]
    return len(ours), float(np.asarray(mask_utils.iou(rles, ref, [0] * len(ref))).max(axis=1).mean())


def run_ours(args, iou: float) -> dict:
    """:func:`ours` in a child process that never imports torch (its peak RSS is its own)."""
    flags = {"--models": args.models, "--grid": args.grid, "--width": args.width, "--height": args.height,
             "--repeat": args.repeat, "--leak-requests": args.leak_requests, "--iou": repr(iou), "--masks": args.masks}  # fmt: skip
    cmd = [sys.executable, __file__, "--ours-only", *[str(v) for kv in flags.items() for v in kv]]
    child = subprocess.run(cmd, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(child.stderr)
    return json.loads(child.stdout.strip().splitlines()[-1])


def report_times(refs: list[dict], mine: dict) -> None:
    ref = min(refs, key=lambda r: r["seconds"])
    best = min(mine["runs"], key=lambda r: r["seconds"])
    worst = min(mine["unfiltered_runs"], key=lambda r: r["seconds"])
    print()
    print(f"{'pipeline':<44} {'seconds':>8} {'masks':>6}")
    print(f"{'reference: sam2 AMG + 1 CLIP call per mask':<44} {ref['seconds']:>8.2f} {ref['masks']:>6}")
    print(f"{'  of which AMG':<44} {ref['amg_seconds']:>8.2f}")
    print(f"{'  of which per-mask CLIP':<44} {ref['clip_seconds']:>8.2f}")
    print(f"{'ours: ONNX Runtime, batched':<44} {best['seconds']:>8.2f} {best['masks']:>6}")
    print(f"{'ours, every prompt upscaled (max_masks)':<44} {worst['seconds']:>8.2f} {worst['masks']:>6}")
    ref_times = [r["seconds"] for r in refs]
    print(f"reference runs: {', '.join(f'{t:.2f}s' for t in ref_times)}")
    for name, runs in (("ours", mine["runs"]), ("every prompt upscaled", mine["unfiltered_runs"])):
        times = [r["seconds"] for r in runs]
        print(
            f"speed-up, {name}: best/best {min(ref_times) / min(times):.2f}x, median/median "
            f"{statistics.median(ref_times) / statistics.median(times):.2f}x   "
            f"(our runs: {', '.join(f'{t:.2f}s' for t in times)})"
        )
    stages = ("decode_image", "encoder", "decoder", "filter", "upsample", "crops", "clip", "total")
    for name, run in (("ours", best), ("every prompt upscaled", worst)):
        tm = run["timings_ms"]
        print(f"time by stage, {name} (ms): " + ", ".join(f"{k} {tm.get(k, 0):.0f}" for k in stages))


def report_fidelity(args, ref: dict, mine: dict) -> None:
    for name, key in (("ours", "runs_rles"), ("every prompt upscaled", "unfiltered_runs_rles")):
        count, miou = fidelity(mine[key], ref["rles"])
        print(
            f"fidelity, {name} vs sam2 AMG (same weights, points, thresholds): {count} vs {ref['masks']} "
            f"masks, each paired with its best-IoU reference mask: mean IoU {miou:.4f}"
        )
    expected = open_clip_labels(args, mine["runs_rles"])
    got = mine["runs_labels"]
    same = sum(a[0] == b[0] for a, b in zip(got, expected))
    worst_conf = max((abs(a[1] - b[1]) for a, b in zip(got, expected)), default=0.0)
    print(
        f"labels, ours vs open_clip zero-shot on the same crops: {same} of {len(expected)} equal, "
        f"largest confidence difference {worst_conf:.1e}"
    )


def answer_shape(rles: list[dict]) -> tuple[float, int]:
    """(median runs per mask, bytes of RLE text in the answer) of an answer's masks."""
    from seglabel_server import amg

    runs = []
    for rle in rles:
        flat = amg.decode_rle(rle).T.reshape(-1)
        runs.append(int(np.count_nonzero(flat[1:] != flat[:-1])) + 1)
    return (float(np.median(runs)) if runs else 0.0), sum(len(r["counts"]) for r in rles)


def report_inputs(rows: list[tuple[str, dict]]) -> None:
    """Ours on each benchmark input: how ragged its masks are and what the answer path costs."""
    print()
    print(f"{'input':<34} {'runs/mask':>9} {'RLE kB':>8} {'seconds':>8} {'upsample ms':>11} {'crops ms':>8}")
    for name, mine in rows:
        best = min(mine["runs"], key=lambda r: r["seconds"])
        runs, text = answer_shape(mine["runs_rles"])
        tm = best["timings_ms"]
        print(f"{name:<34} {runs:>9.0f} {text / 1e3:>8.1f} {best['seconds']:>8.2f} "
              f"{tm.get('upsample', 0):>11.0f} {tm.get('crops', 0):>8.0f}")  # fmt: skip


def report_memory(mine: dict) -> None:
    print(
        f"our peak RSS: {mine['peak_rss_mb']:.0f} MB (child process, no torch); reference process peak RSS: "
        f"{peak_rss_mb():.0f} MB"
    )
    if "rss_trace_mb" in mine:
        trace = mine["rss_trace_mb"]
        print("RSS over consecutive requests (request: MB): " + ", ".join(f"{i}: {m}" for i, m in trace))
        growth = trace[-1][1] - trace[1][1] if len(trace) > 1 else 0.0
        print(f"growth from request {trace[1][0]} to {trace[-1][0]}: {growth:+.1f} MB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--ref-repeat", type=int, default=2, help="reference runs (~75 s each here)")
    ap.add_argument("--leak-requests", type=int, default=50)
    ap.add_argument(
        "--smooth-models",
        default="",
        help="a repository exported with --sam2 random-smooth:<size> (masks with trained-like run "
        "counts): ours runs on it too, and both inputs are reported",
    )
    ap.add_argument("--iou", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ours-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ours_only:
        print(json.dumps(ours(args)))
        return 0
    iou, upscaled = choose_iou_threshold(args)
    print(
        f"RANDOM weights, full-size architectures from {args.models}; {args.width}x{args.height} photo, "
        f"grid {args.grid}; pred_iou_thresh {iou:.4f} (-> ~{args.masks} masks, {upscaled} of "
        f"{args.grid**2} prompts have a candidate above it), stability and NMS off",
        flush=True,
    )
    mine = run_ours(args, iou)
    refs = [reference(args, iou) for _ in range(args.ref_repeat)]
    report_times(refs, mine)
    report_fidelity(args, min(refs, key=lambda r: r["seconds"]), mine)
    report_memory(mine)
    inputs = [("random weights (ragged masks)", mine)]
    if args.smooth_models:
        smooth = argparse.Namespace(**{**vars(args), "models": args.smooth_models, "leak_requests": 0})
        s_iou, _ = choose_iou_threshold(smooth)
        inputs.append(("random-smooth (trained-like masks)", run_ours(smooth, s_iou)))
    report_inputs(inputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
