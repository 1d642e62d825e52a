"""Tracking speed and state (issue 34): seglabel's tracking loop (``TrackSession`` on the exported
graphs under ONNX Runtime) against sam2's own ``SAM2VideoPredictor`` on the same full-size
hiera-tiny weights (random: speed does not depend on their values; the tracks mean nothing), the
same frames and prompts, in the same run. Prints frames/s per object count and frame size, the
time per stage, the state kept per object (ours bounded; sam2's grows with every frame), RSS,
and the two sides' mask agreement (mean IoU) where both ran.

    python scripts/bench_track.py --objects 1,3,10 --frames 12 --sizes 512,1024 --sam2-objects 1,3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from seglabel_export import sources
from seglabel_export.video import export_video
from seglabel_server.backends.onnx_folder import OnnxFolderBackend
from seglabel_server.models.images import video_preprocess
from seglabel_server.models.torch_modules.video import tracking_settings
from seglabel_server.pipeline.track_models import DirectTrackModels
from seglabel_server.pipeline.tracker import Prompt, TrackSession
from seglabel_server.pipeline.tracking import TrackConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FULL = 7  # frames after which the memory bank is full (sam2's num_maskmem): "steady" rates from there


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_frames(folder: Path, n: int, width: int, height: int) -> None:
    """Coloured discs drifting over noise, JPEG files named as sam2's loader wants."""
    rng = np.random.default_rng(0)
    base = rng.integers(40, 140, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for t in range(n):
        f = base.copy()
        for k in range(10):
            cx, cy = (0.08 + 0.09 * k) * width + 2 * t, (0.3 + 0.04 * (k % 5)) * height + t
            f[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.03 * width) ** 2] = (200, 30 + 20 * k, 60)
        Image.fromarray(f).save(folder / f"{t:05d}.jpg", quality=90)


def prompts(n: int, width: int, height: int) -> list[Prompt]:
    return [
        Prompt(k + 1, points=[((0.08 + 0.09 * k) * width, (0.3 + 0.04 * (k % 5)) * height)], labels=[1])
        for k in range(n)
    ]


class Timed:
    """The models with each call's wall time summed per stage."""

    def __init__(self, models):
        self.models, self.times = models, defaultdict(float)

    def __getattr__(self, name):
        fn = getattr(self.models, name)

        async def timed(*a):
            t0 = time.perf_counter()
            out = await fn(*a)
            self.times[name] += time.perf_counter() - t0
            return out

        return timed


def run_ours(models, cfg, folder: Path, n_frames: int, objects: int, size: tuple[int, int]):
    w, h = size
    timed = Timed(models)
    session = TrackSession(timed, cfg, num_frames=n_frames)
    masks, host, per_frame = {}, defaultdict(float), []

    async def go():
        for t in range(n_frames):
            start = t0 = time.perf_counter()
            rgb = np.asarray(Image.open(folder / f"{t:05d}.jpg").convert("RGB"))
            pix = video_preprocess(rgb, cfg.image_size, MEAN, STD)[None]
            host["decode+resize"] += time.perf_counter() - t0
            answers = await session.step(t, pix, (h, w), prompts(objects, w, h) if t == 0 else ())
            t0 = time.perf_counter()
            logits = torch.from_numpy(np.stack([a.logits for a in answers]))[:, None]
            up = torch.nn.functional.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            masks[t] = (up[:, 0] > 0).numpy()
            host["upsample+threshold"] += time.perf_counter() - t0
            per_frame.append(time.perf_counter() - start)

    t0 = time.perf_counter()
    asyncio.run(go())
    wall = time.perf_counter() - t0
    return wall, masks, {**timed.times, **host}, session.state_bytes(), per_frame


def run_sam2(predictor, folder: Path, n_frames: int, objects: int, size: tuple[int, int]):
    w, h = size
    t0 = time.perf_counter()
    state = predictor.init_state(video_path=str(folder))
    for p in prompts(objects, w, h):
        predictor.add_new_points_or_box(state, 0, p.obj_id, points=list(p.points), labels=list(p.labels))
    masks, per_frame, t1 = {}, [], time.perf_counter()
    for t, _, logits in predictor.propagate_in_video(state):
        masks[t] = (logits[:, 0] > 0).numpy()
        per_frame.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
    wall = time.perf_counter() - t0
    per_obj = {}
    for idx, out in state["output_dict_per_obj"].items():
        per_obj[state["obj_idx_to_id"][idx]] = sum(
            v.numel() * v.element_size()
            for kind in out.values()
            for o in kind.values()
            for v in o.values()
            if isinstance(v, torch.Tensor)
        )
    return wall, masks, per_obj, per_frame


def mean_iou(a: dict, b: dict) -> float:
    ious = []
    for t in a:
        for i in range(len(a[t])):
            u = np.logical_or(a[t][i], b[t][i]).sum()
            ious.append(1.0 if u == 0 else np.logical_and(a[t][i], b[t][i]).sum() / u)
    return float(np.mean(ious))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", default="1,3,10")
    ap.add_argument("--sam2-objects", default="1,3", help="object counts sam2's predictor also runs")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--sizes", default="1024", help="frame widths (16:9 frames)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "seglabel-bench-track"))
    args = ap.parse_args()
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    predictor = build_sam2_video_predictor(sources.SAM2_CONFIGS["tiny"], None, device="cpu")
    work = Path(args.workdir)
    graphs = work / "graphs"
    if not (graphs / "video.json").exists():
        t0 = time.perf_counter()
        export_video(predictor, graphs)
        print(
            f"exported the video graphs (full-size hiera-tiny, random weights, seed 0) in {time.perf_counter() - t0:.0f} s"
        )
    models = DirectTrackModels(OnnxFolderBackend(graphs))
    cfg = TrackConfig.from_settings(tracking_settings(predictor))
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs; {args.frames} frames; sam2 fill holes: skipped on CPU (its CUDA kernel)"
    )
    print("frames/s over the whole run (in brackets: from frame 7 on, the memory bank full)")
    print(
        "| frame | objects | seglabel frames/s | sam2 frames/s | ratio | mean IoU | state/object ours | sam2's | RSS MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    stages = {}
    for width in (int(s) for s in args.sizes.split(",")):
        size = (width, width * 9 // 16)
        folder = work / f"frames-{width}-{args.frames}"
        folder.mkdir(parents=True, exist_ok=True)
        if len(list(folder.glob("*.jpg"))) != args.frames:
            write_frames(folder, args.frames, *size)
        for n in (int(s) for s in args.objects.split(",")):
            wall, ours, times, state, frames_t = run_ours(models, cfg, folder, args.frames, n, size)
            fps = args.frames / wall
            steady = 1 / np.mean(frames_t[FULL:]) if len(frames_t) > FULL else float("nan")
            stages[(width, n)] = {k: v / args.frames for k, v in times.items()}
            row = [f"{size[0]}x{size[1]}", str(n), f"{fps:.3f} ({steady:.3f})"]
            per_obj = max(state.values()) / 2**20
            if str(n) in args.sam2_objects.split(","):
                s_wall, theirs, s_state, s_frames = run_sam2(predictor, folder, args.frames, n, size)
                s_fps = args.frames / s_wall
                s_steady = 1 / np.mean(s_frames[FULL:]) if len(s_frames) > FULL else float("nan")
                row += [f"{s_fps:.3f} ({s_steady:.3f})", f"{fps / s_fps:.2f}x ({steady / s_steady:.2f}x)"]
                row += [f"{mean_iou(ours, theirs):.4f}"]
                row += [f"{per_obj:.2f} MB", f"{max(s_state.values()) / 2**20:.2f} MB"]
            else:
                row += ["not run", "", "", f"{per_obj:.2f} MB", ""]
            print("| " + " | ".join(row + [f"{rss_mb():.0f}"]) + " |", flush=True)
    print("\nseconds per frame by stage (ours):")
    for (width, n), st in stages.items():
        print(f"  {width}px, {n} objects: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(st.items())))
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
