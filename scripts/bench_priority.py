"""Interactive and batch on one server: a labelled one-point click on a cached upload, idle and
while ``seglabel label`` saturates the same server with a folder of distinct images; and the job's
images/s alone and with one click a second beside it. Same server, same run. With ``--fairness``:
two ``seglabel label`` jobs of the same class started together, each one's images/s while both run.
Printed, never asserted.

    python scripts/bench_priority.py --models models [--images 24] [--clicks 20] [--fairness]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import photo  # noqa: E402
from seglabel_api.datasets.job import dataset_request  # noqa: E402
from seglabel_client.client import AsyncSegmenterClient  # noqa: E402
from seglabel_client.dataset import LabelOptions, label_folder_async  # noqa: E402
from seglabel_server.service.config import ServerConfig  # noqa: E402
from seglabel_server.transport.server import create_server  # noqa: E402

LABELS = ("person", "car", "dog", "tree", "sky", "building")


def folder(root: Path, n: int, offset: int, img: np.ndarray) -> None:
    root.mkdir(parents=True)
    for i in range(n):
        out = img.copy()
        out[:2, :2] = ((offset + i) * 37 % 256, (offset + i) * 11 % 256, 7)
        buf = io.BytesIO()
        Image.fromarray(out).save(buf, format="JPEG", quality=92)
        (root / f"img_{i:03d}.jpg").write_bytes(buf.getvalue())


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def run(args) -> None:
    server = await create_server(ServerConfig(port=0, models=args.models, interactive_lane=args.lane))
    await server.load()
    target = f"127.0.0.1:{server.port}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-priority-"))
    img = photo(args.width, args.height)
    opts = LabelOptions(dataset_request(labels=LABELS, points_per_side=args.grid, pred_iou_thresh=0.0,
                                        stability_score_thresh=0.0, box_nms_thresh=1.0, max_masks=args.masks))  # fmt: skip
    rng = np.random.default_rng(0)
    if args.fairness:
        await fairness(args, target, tmp, img, opts)
        await server.stop(0)
        return
    async with AsyncSegmenterClient(target, timeout=900) as c:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        up = await c.upload(buf.getvalue())
        await c.segment(
            file_id=up.file_id, prompt_type="points", points=[(10, 10)], labels=LABELS, overlay=False
        )

        async def click() -> float:
            x, y = float(rng.uniform(0, args.width)), float(rng.uniform(0, args.height))
            t0 = time.perf_counter()
            await c.segment(
                file_id=up.file_id, prompt_type="points", points=[(x, y)], labels=LABELS, overlay=False
            )
            return (time.perf_counter() - t0) * 1000

        idle = [await click() for _ in range(args.clicks)]

        async def job(name: str, clicks: bool) -> tuple[float, list[float]]:
            folder(tmp / name, args.images, hash(name) % 1000 * 1000, img)
            task = asyncio.create_task(label_folder_async(tmp / name, tmp / f"{name}-out", target, opts))
            got: list[float] = []
            t0 = time.perf_counter()
            if clicks:
                await asyncio.sleep(2.0)  # the job's window is full
                while not task.done():
                    got.append(await click())
                    await asyncio.sleep(max(0.0, 1.0 - got[-1] / 1000))
            await task
            return args.images / (time.perf_counter() - t0), got

        alone, _ = await job("alone", clicks=False)
        with_clicks, busy = await job("clicks", clicks=True)
    await server.stop(0)
    print(f"{args.images} images {args.width}x{args.height}, grid {args.grid}, {args.masks} masks, {len(LABELS)} labels; "
          f"clicks: one labelled point on a cached upload; interactive lane {'on' if args.lane else 'off'}")  # fmt: skip
    print(f"{'click':<36} {'p50 ms':>8} {'p99 ms':>8} {'n':>4}")
    print(f"{'idle':<36} {statistics.median(idle):>8.0f} {pct(idle, 99):>8.0f} {len(idle):>4}")
    print(
        f"{'while seglabel label runs':<36} {statistics.median(busy):>8.0f} {pct(busy, 99):>8.0f} {len(busy):>4}"
    )
    print(
        f"busy / idle: p50 {statistics.median(busy) / statistics.median(idle):.1f}x, p99 {pct(busy, 99) / pct(idle, 99):.1f}x"
    )
    print(
        f"job alone {alone:.3f} images/s; with a click a second {with_clicks:.3f} images/s ({with_clicks / alone:.2f}x)"
    )


async def fairness(args, target: str, tmp: Path, img: np.ndarray, opts: LabelOptions) -> None:
    """Two jobs of one class at once: images each has done when the first one finishes."""
    done = {"a": 0, "b": 0}
    for i, name in enumerate("ab"):
        folder(tmp / name, args.images, (i + 7) * 1000, img)
    order: list[str] = []

    def counter(name):
        def progress(p, final=False):
            if p.done > done[name]:
                order.append(name)
            done[name] = p.done

        return progress

    t0 = time.perf_counter()
    jobs = {name: asyncio.create_task(label_folder_async(tmp / name, tmp / f"{name}-out", target, opts,
                                                         progress=counter(name))) for name in "ab"}  # fmt: skip
    first, _ = await asyncio.wait(jobs.values(), return_when=asyncio.FIRST_COMPLETED)
    t_first = time.perf_counter() - t0
    at_first = dict(done)
    await asyncio.gather(*jobs.values())
    total = time.perf_counter() - t0
    a, b = at_first["a"], at_first["b"]
    print(
        f"two jobs of {args.images} images each, same class (batch), started together; {total:.0f} s in all"
    )
    print("order of completion:", "".join(order))
    print(
        f"when the first finished ({t_first:.0f} s): job a {a} images, job b {b} images "
        f"({a / t_first:.3f} vs {b / t_first:.3f} images/s; the slower at {min(a, b) / max(a, b, 1):.2f}x the faster)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--masks", type=int, default=30)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--fairness", action="store_true", help="two jobs at once instead of the clicks")
    ap.add_argument("--no-lane", dest="lane", action="store_false",
                    help="the server's --no-interactive-lane: clicks share the batch sessions and priority")  # fmt: skip
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
