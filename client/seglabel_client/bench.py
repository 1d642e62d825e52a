"""``seglabel-bench``: latency / throughput harness against running servers, through the public client.

For each server (``--server LABEL=HOST:PORT``, several allowed, measured one after another) and each
concurrency level: warm-up requests (excluded), then ``--requests`` StreamSegment calls from
``concurrency`` concurrent clients. Reports p50/p90/p95/p99 latency, throughput, time to first mask and
first label, and the server's own queue vs compute time and per-stage times (from the response
timings). Writes a terminal
table, CSV and JSON, and a PNG plot of latency and throughput vs concurrency.

    seglabel-bench --server on=127.0.0.1:50051 --server off=127.0.0.1:50052 --concurrency 1,4,16
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from seglabel_api import flags, options
from seglabel_api.options import SegmentOptions

from seglabel_client import SAMPLE_IMAGES, sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a server, a proxy or a test to bind next)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Sample:
    latency_s: float
    first_mask_s: float
    first_label_s: float
    queue_ms: float
    total_ms: float
    masks: int
    stages: dict  # the server's per-stage times for this request (ms)


STAGES = ("decode_image", "encoder", "decoder", "filter", "upsample", "crops", "clip", "render")


@dataclass
class Row:
    server: str
    concurrency: int
    requests: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    first_mask_p50_ms: float
    first_label_p50_ms: float
    server_queue_p50_ms: float
    server_compute_p50_ms: float
    masks_per_request: float
    server_stages_p50_ms: dict


async def one_request(client: AsyncSegmenterClient, image: bytes, request: SegmentOptions) -> Sample:
    t0 = time.perf_counter()
    first_mask = first_label = float("nan")
    summary = None
    masks = 0
    async for ev in client.stream_segment(image, options=request):
        kind = ev.WhichOneof("event")
        now = time.perf_counter() - t0
        if kind == "masks":
            if first_mask != first_mask:
                first_mask = now
            masks += len(ev.masks.masks)
        elif kind == "label_update" and first_label != first_label:
            first_label = now
        elif kind == "summary":
            summary = ev.summary
    latency = time.perf_counter() - t0
    if summary is None:
        raise RuntimeError("the stream ended without its summary")
    t = summary.timings
    stages = {name: getattr(t, f"{name}_ms") for name in STAGES}
    return Sample(latency, first_mask, first_label, t.queue_ms, t.total_ms, masks, stages)


async def run_level(
    target: str, images: list[bytes], concurrency: int, requests: int, warmup: int, request: SegmentOptions
) -> tuple[list[Sample], int, float]:
    async with AsyncSegmenterClient(target, timeout=600) as client:
        for i in range(warmup):
            await one_request(client, images[i % len(images)], request)
        samples: list[Sample] = []
        errors = 0
        counter = iter(range(requests))

        async def worker():
            nonlocal errors
            for i in counter:
                try:
                    samples.append(await one_request(client, images[i % len(images)], request))
                except Exception as exc:  # counted, reported; the sweep goes on
                    errors += 1
                    print(f"  request failed: {exc}", file=sys.stderr)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return samples, errors, time.perf_counter() - t0


def summarize(server: str, concurrency: int, samples: list[Sample], errors: int, wall: float) -> Row:
    def pct(values, q):
        v = [x for x in values if x == x]
        return float(np.percentile(v, q)) if v else float("nan")

    lat = [s.latency_s * 1000 for s in samples]
    return Row(
        server,
        concurrency,
        len(samples),
        errors,
        len(samples) / wall if wall > 0 else 0.0,
        pct(lat, 50),
        pct(lat, 90),
        pct(lat, 95),
        pct(lat, 99),
        pct([s.first_mask_s * 1000 for s in samples], 50),
        pct([s.first_label_s * 1000 for s in samples], 50),
        pct([s.queue_ms for s in samples], 50),
        pct([s.total_ms - s.queue_ms for s in samples], 50),
        float(np.mean([s.masks for s in samples])) if samples else 0.0,
        {name: pct([s.stages[name] for s in samples], 50) for name in STAGES},
    )


def format_table(rows: list[Row]) -> str:
    head = (
        f"{'server':<10} {'conc':>4} {'reqs':>5} {'err':>3} {'rps':>7} {'p50':>8} {'p90':>8} {'p95':>8} "
        f"{'p99':>8} {'1st mask':>9} {'1st label':>9} {'srv queue':>9} {'srv comp':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.server:<10} {r.concurrency:>4} {r.requests:>5} {r.errors:>3} {r.throughput_rps:>7.2f} "
            f"{r.p50_ms:>8.0f} {r.p90_ms:>8.0f} {r.p95_ms:>8.0f} {r.p99_ms:>8.0f} "
            f"{r.first_mask_p50_ms:>9.0f} {r.first_label_p50_ms:>9.0f} {r.server_queue_p50_ms:>9.0f} "
            f"{r.server_compute_p50_ms:>9.0f}"
        )
    lines.append("(latencies in ms, p50 for the time-to-first columns and server times)")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for server in dict.fromkeys(r.server for r in rows):
        mine = [r for r in rows if r.server == server]
        c = [r.concurrency for r in mine]
        a.plot(c, [r.p50_ms for r in mine], marker="o", label=f"{server} p50")
        a.plot(c, [r.p95_ms for r in mine], marker="x", linestyle="--", label=f"{server} p95")
        b.plot(c, [r.throughput_rps for r in mine], marker="o", label=server)
    for ax, title, unit in ((a, "latency", "ms"), (b, "throughput", "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="seglabel-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--server", action="append", default=[], help="LABEL=HOST:PORT (repeatable)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--requests", type=int, default=0, help="per level (default: max(8, 2 x concurrency))")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--image", action="append", default=[], help="image files (default: bundled photos)")
    flags.add_flags(ap, options.BENCH, defaults={"points_per_side": 8, "max_masks": 16})
    ap.add_argument("--out", default="bench-results/seglabel-bench", help="prefix for .csv, .json and .png")
    args = ap.parse_args(argv)
    servers = [s.split("=", 1) if "=" in s else (s, s) for s in (args.server or ["server=127.0.0.1:50051"])]
    images = [Path(p).read_bytes() for p in args.image] or [sample_image_bytes(n) for n in SAMPLE_IMAGES]
    request = flags.from_args(args, options.BENCH)  # no overlay: a client that streams masks draws its own
    rows = []
    for label, target in servers:
        for c in (int(v) for v in args.concurrency.split(",")):
            n = args.requests or max(8, 2 * c)
            samples, errors, wall = asyncio.run(run_level(target, images, c, n, args.warmup, request))
            rows.append(summarize(label, c, samples, errors, wall))
            print(format_table(rows[-1:]).splitlines()[2], flush=True)
    print()
    print(format_table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in rows], indent=2))
    plot(rows, out.with_suffix(".png"))
    print(f"wrote {out}.csv, {out}.json, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
