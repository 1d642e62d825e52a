"""Issue 5 GPU benchmark, one process: build full-size random-weight models (hiera-tiny + ViT-B-32),
check the torch-CUDA backend's parity against torch on the CPU, then time the reference pipeline
(sam2 AMG eager fp32 + one CLIP call per mask with PIL preprocessing, as the original application did) against our
best GPU path (PyTorch CUDA bf16/fp16 through the batching scheduler) at grid 16 and 32, concurrency
1/8/32, a 1024x1024 photo, ~--masks masks per image fixed by configuration (random weights: stability
and NMS off, a predicted-IoU threshold chosen from the data). Results go to OUT as they come.

    python scripts/gpu_bench.py --out $OUT                          # on a CUDA machine
    python scripts/gpu_bench.py --device cpu --sam2 tiny --clip tiny --grids 4 --concurrency 1,2  # dry run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from seglabel_api import sample_image_bytes
from seglabel_export.exporter import export_repository
from seglabel_export.parity import rel_l2
from seglabel_server import amg, imaging, kinds
from seglabel_server.backends import create_backend
from seglabel_server.config import ServerConfig
from seglabel_server.kinds import sam2
from seglabel_server.repository import ModelRepository
from seglabel_server.service import build_pipeline
from seglabel_server.types import RequestContext, SegmentParams
from seglabel_server.vocab import DEFAULT_VOCABULARY


class Report:
    def __init__(self, out: Path):
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict = {}
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)
        (self.out / "gpu_bench.txt").write_text("\n".join(self.lines) + "\n")

    def put(self, key: str, value) -> None:
        self.data[key] = value
        (self.out / "gpu_bench.json").write_text(json.dumps(self.data, indent=2, default=str))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int = 3) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeat):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def choose_iou(backend, repo, image, grid: int, masks: int) -> float:
    s = repo.sam2["image_size"]
    x = imaging.sam_preprocess(image, s, repo.sam2["pixel_mean"], repo.sam2["pixel_std"])[None]
    feats = sam2.encode(backend, x)[0]
    pts = amg.build_point_grid(grid) * np.array([image.shape[1], image.shape[0]])
    coords = amg.to_model_coords(pts, image.shape[:2], s)[:, None]
    ious = np.sort(sam2.decode(backend, feats, coords, np.ones((len(coords), 1), np.int32)).iou.ravel())[::-1]
    k = min(masks, len(ious) - 1)
    return float((ious[k - 1] + ious[k]) / 2)


def parity(report: Report, repo: ModelRepository, gpu_backends: dict, image: np.ndarray) -> None:
    cpu = create_backend("torch", repo, "cpu", "fp32")
    s = repo.sam2["image_size"]
    x = imaging.sam_preprocess(image, s, repo.sam2["pixel_mean"], repo.sam2["pixel_std"])[None]
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, s, (16, 1, 2)).astype(np.float32)
    labels = np.ones((16, 1), np.int32)
    ref_f = sam2.encode(cpu, x)[0]
    ref_d = sam2.decode(cpu, ref_f, coords, labels)
    crops = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    ref_c = kinds.get("clip").execute(cpu, [crops])[0]
    rows = {}
    for name, be in gpu_backends.items():
        f = sam2.encode(be, x)[0]
        d = sam2.decode(be, f, coords, labels)
        rows[name] = {
            "image_embed": rel_l2(
                f.arrays["image_embed"].float().cpu().numpy(), ref_f.arrays["image_embed"].numpy()
            ),
            "masks": rel_l2(d.masks.numpy(), ref_d.masks.numpy()),
            "iou": rel_l2(d.iou, ref_d.iou),
            "clip": rel_l2(kinds.get("clip").execute(be, [crops])[0], ref_c),
        }
        report.say(
            f"parity {name:<10} vs torch CPU fp32: "
            + ", ".join(f"{k} {v:.2e}" for k, v in rows[name].items())
        )
    report.put("parity", rows)


def reference_pipeline(report: Report, backend, image: np.ndarray, grid: int, iou: float, device: str):
    import open_clip
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    sam = backend.mods["sam2_image_encoder"].model
    clip = backend.mods["clip_image_encoder"].clip
    gen = SAM2AutomaticMaskGenerator(
        sam,
        points_per_side=grid,
        points_per_batch=64,
        pred_iou_thresh=iou,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    s = sam.image_size
    gen.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    preprocess = open_clip.image_transform(224, is_train=False)
    tok = open_clip.get_tokenizer("ViT-B-32")
    with torch.inference_mode():
        text = clip.encode_text(
            tok([f"a photo of a {v}." for v in DEFAULT_VOCABULARY]).to(device), normalize=True
        )
        t_amg, records = timed(lambda: gen.generate(image), device)

        def per_crop():
            out = []
            for r in records:
                x, y, w, h = (int(v) for v in r["bbox"])
                crop = Image.fromarray(image).crop((x, y, x + max(w, 1), y + max(h, 1)))
                emb = clip.encode_image(preprocess(crop)[None].to(device), normalize=True)
                out.append(int((emb @ text.T).argmax()))
            return out

        t_clip, _ = timed(per_crop, device)
    return t_amg, t_clip, len(records)


def ours(backend, repo, image: np.ndarray, grid: int, iou: float, concurrency: int, rounds: int, masks: int):
    cfg = ServerConfig(max_batch={"encoder": 32, "decoder": 1024, "clip": 64}, max_inflight=1024)
    pipe = build_pipeline(backend, repo, cfg)
    params = SegmentParams(
        points_per_side=grid,
        pred_iou_thresh=iou,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        max_masks=masks,
        return_overlay=False,
    )

    async def burst():
        async def one():
            t0 = time.perf_counter()
            res = await pipe.run(params, image, RequestContext())
            return time.perf_counter() - t0, res

        return await asyncio.gather(*[one() for _ in range(concurrency)])

    async def main():
        await burst()  # warm-up (also fills the text-embedding cache)
        lat, stages, n_masks = [], [], []
        t0 = time.perf_counter()
        for _ in range(rounds):
            for dt, res in await burst():
                lat.append(dt)
                stages.append(res.timings)
                n_masks.append(len(res.masks))
        wall = time.perf_counter() - t0
        return lat, stages, n_masks, wall

    try:
        lat, stages, n_masks, wall = asyncio.run(main())
    finally:
        pipe.close()
    keys = ("encoder", "decoder", "filter", "upsample", "crops", "clip", "queue")
    stage_ms = {k: float(np.median([s.get(k, 0.0) for s in stages])) for k in keys}
    return {
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p95_ms": float(np.percentile(lat, 95) * 1000),
        "images_per_s": len(lat) / wall,
        "masks": float(np.mean(n_masks)),
        "stage_ms_p50": stage_ms,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results/gpu")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sam2", default="random:tiny")
    ap.add_argument("--clip", default="random:ViT-B-32")
    ap.add_argument("--grids", default="16,32")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--masks", type=int, default=50)
    ap.add_argument("--precisions", default="bf16,fp16")
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    report = Report(Path(args.out))
    dev = args.device
    report.say(
        f"torch {torch.__version__}, device {dev}"
        + (f" ({torch.cuda.get_device_name(0)})" if dev.startswith("cuda") else "")
    )
    report.say("RANDOM weights of the full-size architectures: speed is real, masks and labels are not.")
    t0 = time.perf_counter()
    manifest = export_repository(
        Path("/tmp/seglabel-gpu-models"), args.sam2, args.clip, write_onnx=False, log=lambda m: None
    )
    repo = ModelRepository(Path(manifest["_root"]), manifest)
    report.say(
        f"models built in {time.perf_counter() - t0:.1f}s ({manifest['sam2']['spec']['architecture']}, "
        f"{manifest['clip']['spec']['architecture']})"
    )
    image = imaging.decode_image(sample_image_bytes("astronaut.jpg"))
    image = np.asarray(Image.fromarray(image).resize((args.size, args.size), Image.BICUBIC))

    fp32 = create_backend("torch", repo, dev, "fp32")
    precisions = [p for p in args.precisions.split(",") if p] if dev.startswith("cuda") else []
    fast = {p: create_backend("torch", repo, dev, p) for p in precisions}
    parity(report, repo, {"fp32": fp32, **fast}, image)

    grids = [int(g) for g in args.grids.split(",")]
    conc = [int(c) for c in args.concurrency.split(",")]
    results = []
    for grid in grids:
        iou = choose_iou(fp32, repo, image, grid, args.masks)
        t_amg, t_clip, n_ref = reference_pipeline(report, fp32, image, grid, iou, dev)
        ref_total = t_amg + t_clip
        report.say(
            f"grid {grid}: reference sam2 AMG fp32 {t_amg * 1000:.0f} ms + {n_ref} per-mask CLIP calls "
            f"{t_clip * 1000:.0f} ms = {ref_total * 1000:.0f} ms per image"
        )
        results.append(
            {
                "grid": grid,
                "path": "reference fp32 (AMG + per-mask CLIP)",
                "concurrency": 1,
                "p50_ms": ref_total * 1000,
                "images_per_s": 1 / ref_total,
                "masks": n_ref,
            }
        )
        for name, be in [("fp32", fp32)] + list(fast.items()):
            for c in conc:
                r = ours(be, repo, image, grid, iou, c, args.rounds, args.masks)
                row = {
                    "grid": grid,
                    "path": f"ours torch {name} batched",
                    "concurrency": c,
                    **r,
                    "speedup_throughput": r["images_per_s"] * ref_total,
                }
                results.append(row)
                st = r["stage_ms_p50"]
                report.say(
                    f"grid {grid} ours {name:<4} c={c:<3} p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  "
                    f"{r['images_per_s']:7.2f} img/s ({row['speedup_throughput']:.1f}x ref)  masks {r['masks']:.0f}  "
                    + " ".join(f"{k} {v:.0f}" for k, v in st.items())
                )
                report.put("results", results)
    report.say()
    report.say(f"{'grid':>4} {'path':<40} {'conc':>4} {'p50 ms':>9} {'img/s':>8} {'vs ref':>7} {'masks':>6}")
    for r in results:
        ratio = r.get("speedup_throughput", 1.0)
        report.say(
            f"{r['grid']:>4} {r['path']:<40} {r['concurrency']:>4} {r['p50_ms']:>9.1f} {r['images_per_s']:>8.2f} "
            f"{ratio:>6.1f}x {r['masks']:>6.0f}"
        )
    if dev.startswith("cuda"):
        report.say(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
