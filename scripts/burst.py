"""A burst of concurrent streams on one server: N StreamSegment calls at once on one image, and what
became of each (OK, refused before ``accepted``, or failed after it). The run of issue 23: 48 streams,
grid 16, thresholds 0, NMS off, max_masks 1000, a 640x480 image, on a server admitting 64.

    python scripts/burst.py --models models --streams 48 --grid 16 --masks 1000
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
from collections import Counter

import grpc
import numpy as np
from benchlib import photo, server_process
from PIL import Image
from seglabel_client.bench import free_port
from seglabel_client.client import AsyncSegmenterClient


async def one(c: AsyncSegmenterClient, image: bytes, kw: dict) -> str:
    accepted = False
    try:
        async for ev in c.stream_segment(image, **kw):
            accepted = accepted or ev.WhichOneof("event") == "accepted"
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return f"{exc.code().name} {'after' if accepted else 'before'} accepted"


async def burst(target: str, n: int, image: bytes, kw: dict) -> Counter:
    async with AsyncSegmenterClient(target, timeout=1800) as c:
        return Counter(await asyncio.gather(*[one(c, image, kw) for _ in range(n)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--streams", type=int, default=48)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--max-inflight", type=int, default=64)
    ap.add_argument("server_args", nargs="*", help="extra seglabel-server flags (after --)")
    args = ap.parse_args()
    port = free_port()
    flags = [
        "--models",
        args.models,
        "--port",
        str(port),
        "--max-inflight",
        str(args.max_inflight),
        *args.server_args,
    ]
    with server_process(flags):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(photo(640, 480))).save(buf, format="PNG")
        kw = dict(points_per_side=args.grid, max_masks=args.masks, overlay=False, pred_iou_thresh=0.0,
                  stability_score_thresh=0.0, box_nms_thresh=1.0)  # fmt: skip
        t0 = time.perf_counter()
        outcomes = asyncio.run(burst(f"127.0.0.1:{port}", args.streams, buf.getvalue(), kw))
        seconds = time.perf_counter() - t0
    print(f"{args.streams} concurrent streams (grid {args.grid}, up to {args.masks} masks, 640x480) on a server "
          f"admitting {args.max_inflight}, {' '.join(flags)}: {dict(outcomes)} in {seconds:.1f} s")  # fmt: skip
    return 0 if not any("after" in k for k in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
