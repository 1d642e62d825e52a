"""Depth and OCR latency, and what ``with_depth,with_text`` adds to a Segment (printed, never asserted).

A real server (in this process, ONNX Runtime on the CPU) on a model repository with depth and OCR
(``make models``), one request at a time, the variants alternated round by round so that machine
noise falls on all of them alike:

* EstimateDepth and ExtractText alone, per image;
* Segment grid 16 (labels on), the same with ``with_depth`` and ``with_text``, and the sum of the
  three run separately (Segment + EstimateDepth + ExtractText).

The combined request decodes the image once and runs depth and OCR alongside the masks, so its
extra time should be under depth + OCR run separately.

    python scripts/bench_scene.py --models models [--rounds 3]       # make bench-scene
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import time

import numpy as np
from PIL import Image
from seglabel_client import sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server


def page_photo() -> bytes:
    """scikit-image's photographed book page (real text), PNG."""
    import skimage.data

    buf = io.BytesIO()
    Image.fromarray(np.stack([skimage.data.page()] * 3, -1)).save(buf, format="PNG")
    return buf.getvalue()


async def timed(coro) -> float:
    t0 = time.perf_counter()
    await coro
    return (time.perf_counter() - t0) * 1000.0


async def first_masks(c, **kw) -> float:
    """Milliseconds from the request to its first masks event (a stream)."""
    t0, first = time.perf_counter(), None
    async for ev in c.stream_segment(**kw):
        if ev.HasField("masks") and first is None:
            first = (time.perf_counter() - t0) * 1000.0
    return first


async def run(args) -> None:
    server = await create_server(ServerConfig(port=0, models=args.models, host="127.0.0.1"))
    await server.load()
    info = server.service.info()
    missing = [r for r in (info["depth_unavailable_reason"], info["text_unavailable_reason"]) if r]
    if missing:
        raise SystemExit("this repository lacks depth or OCR: " + "; ".join(missing))
    print(f"models: {args.models} ({'RANDOM weights' if info['random_weights'] else 'trained weights'}: "
          "speed is real, depth values and masks are not)")  # fmt: skip
    photo = sample_image_bytes(args.photo)
    page = page_photo()
    # Filters off and max_masks fixed, so random weights keep the same number of masks as trained ones
    # would (the masks' per-object depth and text statistics are part of the measured work).
    seg = dict(points_per_side=args.grid, overlay=False, max_masks=args.masks, pred_iou_thresh=0.0,
               stability_score_thresh=0.0, box_nms_thresh=1.0)  # fmt: skip
    times: dict[str, list[float]] = {}
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=600) as c:
        up = await c.upload(photo)
        await c.segment(file_id=up.file_id, with_depth=True, with_text=True, **seg)  # warm
        for r in range(args.rounds):
            variants = {  # coroutines: each is awaited once, in the rotated order
                f"EstimateDepth {args.photo}": c.estimate_depth(file_id=up.file_id),
                f"ExtractText {args.photo}": c.extract_text(file_id=up.file_id),
                "ExtractText page photo": c.extract_text(page),
                f"Segment grid {args.grid}": c.segment(file_id=up.file_id, **seg),
                f"Segment grid {args.grid} with_depth,with_text": c.segment(
                    file_id=up.file_id, with_depth=True, with_text=True, **seg
                ),
                f"  first masks, stream grid {args.grid}": first_masks(c, file_id=up.file_id, **seg),
                f"  first masks, stream grid {args.grid} with_depth,with_text": first_masks(
                    c, file_id=up.file_id, with_depth=True, with_text=True, **seg
                ),
            }
            order = list(variants)
            order = order[r % len(order) :] + order[: r % len(order)]  # rotate: noise spreads evenly
            for name in order:
                coro = variants[name]
                times.setdefault(name, []).append(await (coro if "first masks" in name else timed(coro)))
        resp = await c.segment(file_id=up.file_id, with_depth=True, with_text=True, **seg)
    await server.stop(0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{'request (one at a time)':<48} {'p50 ms':>9} {'min ms':>9}   rounds={args.rounds}")
    for k, v in times.items():
        print(f"{k:<48} {med[k]:>9.0f} {min(v):>9.0f}")
    base = med[f"Segment grid {args.grid}"]
    both = med[f"Segment grid {args.grid} with_depth,with_text"]
    separate = med[f"EstimateDepth {args.photo}"] + med[f"ExtractText {args.photo}"]
    print(f"\nwith_depth,with_text adds {both - base:.0f} ms to Segment grid {args.grid}; depth + OCR run "
          f"separately take {separate:.0f} ms; three requests: {base + separate:.0f} ms vs one combined "
          f"{both:.0f} ms ({both / (base + separate):.2f}x)")  # fmt: skip
    print(f"combined answer: {resp.mask_count} masks, {len(resp.mask_depth)} with depth, "
          f"{len(resp.text.lines)} text lines; depth {resp.timings.depth_ms:.0f} ms and OCR "
          f"{resp.timings.text_ms:.0f} ms ran alongside a {resp.timings.total_ms:.0f} ms request")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--photo", default="coffee.jpg")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=50, help="masks kept (and labelled) per Segment")
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
