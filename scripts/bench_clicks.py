"""Interactive clicks: a POINTS request on an upload already segmented (its image embedding cached)
vs the same request on a fresh upload (the encoder runs), alternated, same server, same run.
Printed, never asserted.

    python scripts/bench_clicks.py --models models [--clicks 10]       # make bench-clicks
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import time

import numpy as np
from PIL import Image
from seglabel_client import sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient
from seglabel_server.models.images import decode_image
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server


def variant(photo: np.ndarray, i: int) -> bytes:
    """The photo with one pixel changed: other bytes, so another sha256 (a fresh upload)."""
    img = photo.copy()
    img[0, 0] = (i * 37 % 256, i * 11 % 256, i % 256)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


async def run(args) -> None:
    server = await create_server(ServerConfig(port=0, models=args.models))
    await server.load()
    photo = decode_image(sample_image_bytes(args.photo))
    h, w = photo.shape[:2]
    rng = random.Random(0)
    cached_ms, fresh_ms, enc_ms = [], [], []
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=600) as c:
        up = await c.upload(variant(photo, 0))
        t0 = time.perf_counter()
        await c.segment(file_id=up.file_id, points_per_side=args.grid, overlay=False)
        print(f"photo {args.photo} {w}x{h}; first Segment grid {args.grid} on the upload "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms (encodes and caches the embedding)")  # fmt: skip
        for i in range(args.clicks):
            click = dict(prompt_type="points", points=[(rng.uniform(0, w), rng.uniform(0, h))], overlay=False)
            fresh = await c.upload(variant(photo, i + 1))
            for name in ("cached", "fresh") if i % 2 == 0 else ("fresh", "cached"):
                fid = up.file_id if name == "cached" else fresh.file_id
                t0 = time.perf_counter()
                resp = await c.segment(file_id=fid, **click)
                (cached_ms if name == "cached" else fresh_ms).append((time.perf_counter() - t0) * 1000)
                if name == "fresh":
                    enc_ms.append(resp.timings.encoder_ms)
        hits = server.service.metrics.value("seglabel_embedding_cache_hits_total")
    await server.stop(0)
    c50, f50 = statistics.median(cached_ms), statistics.median(fresh_ms)
    print(f"{'POINTS request (1 click, labelled)':<40} {'p50 ms':>8} {'min':>8} {'max':>8}   n={args.clicks}")
    print(
        f"{'cached (already segmented upload)':<40} {c50:>8.0f} {min(cached_ms):>8.0f} {max(cached_ms):>8.0f}"
    )
    print(f"{'fresh upload (encoder runs)':<40} {f50:>8.0f} {min(fresh_ms):>8.0f} {max(fresh_ms):>8.0f}")
    print(f"cached is {f50 / c50:.1f}x faster (p50); encoder in the fresh ones p50 {statistics.median(enc_ms):.0f} ms; "
          f"cache hits {hits:.0f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--photo", default="astronaut.jpg")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--clicks", type=int, default=10)
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
