"""Soak and abuse harness: a real server (a child process on 127.0.0.1) under the load a dataset
job makes (``--window`` workers, each keeping one StreamSegment in flight on a distinct image, grid
16 with labels) beside clients that mix good requests, cancelled streams, short deadlines, slow
readers and bad inputs, for a bounded time. Prints requests per status (a dataset request refused
at the door is retried after the server's pushback; one that fails after ``accepted`` is counted
apart), p50/p99 of the dataset and good requests against their unloaded p99, the server's RSS
(after warm-up, through the run, at the end; loaded and idle), threads, asyncio tasks and open files
before and after, and its exit code on SIGTERM.

    python scripts/soak.py --models models --duration 1800          # make soak SOAK_SECONDS=1800
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter

import grpc
import numpy as np
from benchlib import metric
from PIL import Image
from seglabel_api import sample_image_bytes
from seglabel_client.bench import free_port
from seglabel_client.client import AsyncSegmenterClient, SegmenterClient

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


_BASES: dict[str, np.ndarray] = {}


def distinct_image(i: int) -> bytes:
    """The i-th image of a dataset: a 640x480 crop of a bundled photo (scaled to 800x600) at its own
    offset, mirrored every other time, PNG: distinct bytes, so no cache answers for another."""
    name = ("astronaut.jpg", "coffee.jpg")[i % 2]
    if name not in _BASES:
        img = Image.open(io.BytesIO(sample_image_bytes(name))).convert("RGB").resize((800, 600))
        _BASES[name] = np.asarray(img)
    y, x = (i * 37) % 120, (i * 53) % 160
    crop = _BASES[name][y : y + 480, x : x + 640]
    if (i // 2) % 2:
        crop = crop[:, ::-1]
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="PNG")
    return buf.getvalue()


def bad_inputs(photo: bytes) -> list[dict]:
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(png, format="PNG")
    return [
        {"image": b"not an image"},
        {"image": photo[: len(photo) // 3]},
        {"image": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"},
        {"image": png.getvalue()},
        {"file_id": "0" * 64},
        {"file_id": "z" * 5000},
        {"image": photo, "points_per_side": 10_000},
        {"image": photo, "prompt_type": "points"},
        {"image": photo, "prompt_type": "box", "boxes": [(5, 5, 1, 1)]},
        {"image": photo, "pred_iou_thresh": float("nan")},
        {"image": photo, "max_masks": 10**7},
    ]


class Soak:
    def __init__(self, args, port: int):
        self.args = args
        self.target = f"127.0.0.1:{port}"
        self.photo = sample_image_bytes("astronaut.jpg")
        self.good = dict(points_per_side=args.grid, max_masks=args.masks, overlay=False, **LOOSE)
        self.bad = bad_inputs(self.photo)
        self.statuses: Counter = Counter()
        self.refused = False
        self.good_ms: list[float] = []
        # what seglabel label sends: the batch class and one job key for the whole window
        self.dataset = dict(points_per_side=16, max_masks=args.window_masks, overlay=False, **LOOSE,
                            priority=args.dataset_priority or None, job="soak-dataset")  # fmt: skip
        self.dataset_ms: list[float] = []
        self.next_image = 0
        self.failed_after_accepted: list[str] = []

    def count(self, kind: str, code: str) -> None:
        self.statuses[(kind, code)] += 1
        self.refused = code == "RESOURCE_EXHAUSTED"

    async def good_request(self, c) -> None:
        t0 = time.perf_counter()
        try:
            await c.segment(self.photo, **self.good)
            self.good_ms.append((time.perf_counter() - t0) * 1000)
            self.count("good", "OK")
        except grpc.aio.AioRpcError as exc:
            self.count("good", exc.code().name)

    async def cancelled(self, c) -> None:
        call = c.stub.StreamSegment(c_request(self.photo, self.good), metadata=c.metadata)
        try:
            async for ev in call:
                if ev.WhichOneof("event") in ("progress", "masks"):
                    call.cancel()
                    break
            self.count("cancel", "CANCELLED")
        except grpc.aio.AioRpcError as exc:
            self.count("cancel", exc.code().name)

    async def deadline(self, c) -> None:
        try:
            await c.segment(self.photo, timeout=random.uniform(0.05, 2.0), **self.good)
            self.count("deadline", "OK")
        except grpc.aio.AioRpcError as exc:
            self.count("deadline", exc.code().name)

    async def slow_reader(self, c) -> None:
        call = c.stub.StreamSegment(c_request(self.photo, self.good), metadata=c.metadata)
        try:
            while await call.read() != grpc.aio.EOF:
                await asyncio.sleep(self.args.slow_s)
            self.count("slow", "OK")
        except grpc.aio.AioRpcError as exc:
            self.count("slow", exc.code().name)

    async def bad_request(self, c) -> None:
        kw = dict(random.choice(self.bad))
        image = kw.pop("image", None)
        try:
            await c.segment(image, **kw)
            self.count("bad", "OK")
        except grpc.aio.AioRpcError as exc:
            self.count("bad", exc.code().name)
        except ValueError:
            self.count("bad", "CLIENT_REFUSED")

    async def dataset_request(self, c, image: bytes) -> str:
        """One dataset item as a stream: 'OK', 'REFUSED' (before accepted: retry it) or the code it
        failed with after accepted."""
        t0, accepted = time.perf_counter(), False
        call = c.stub.StreamSegment(c_request(image, self.dataset), metadata=c.metadata)
        try:
            async for ev in call:
                accepted = accepted or ev.WhichOneof("event") == "accepted"
            self.dataset_ms.append((time.perf_counter() - t0) * 1000)
            return "OK"
        except grpc.aio.AioRpcError as exc:
            if not accepted and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                trailers = dict(exc.trailing_metadata() or ())
                await asyncio.sleep(int(trailers.get("grpc-retry-pushback-ms", 500)) / 1000)
                return "REFUSED"
            self.failed_after_accepted.append(f"{exc.code().name}: {exc.details()}")
            return exc.code().name

    async def dataset_worker(self, until: float) -> None:
        """One slot of a dataset job's window: distinct images, one after the other; a refused
        image is retried after the pushback."""
        async with AsyncSegmenterClient(self.target, timeout=900) as c:
            while time.monotonic() < until:
                image = distinct_image(self.next_image)
                self.next_image += 1
                while True:
                    outcome = await self.dataset_request(c, image)
                    self.statuses[("dataset", outcome)] += 1
                    if outcome != "REFUSED" or time.monotonic() >= until:
                        break

    async def client(self, until: float) -> None:
        actions = [self.good_request, self.cancelled, self.deadline, self.slow_reader, self.bad_request]
        weights = [40, 15, 10, 10, 25]
        async with AsyncSegmenterClient(self.target, timeout=600) as c:
            backoff = 0.25
            while time.monotonic() < until:
                self.refused = False
                await random.choices(actions, weights)[0](c)
                # A refused request (server full) is retried later, as gRPC's retry policy would.
                backoff = min(backoff * 2, 4.0) if self.refused else 0.25
                if self.refused:
                    await asyncio.sleep(random.uniform(0.5, 1.0) * backoff)


def c_request(photo: bytes, kw: dict):
    from seglabel_client.client import build_request

    return build_request(photo, **kw)


def dump_smaps(args, pid: int, when: str) -> None:
    """With --smaps DIR: the server's /proc/PID/smaps at the start and the end, to see which
    mappings keep memory (heap, anonymous arenas, model files)."""
    if args.smaps:
        os.makedirs(args.smaps, exist_ok=True)
        with (
            open(f"/proc/{pid}/smaps") as src,
            open(os.path.join(args.smaps, f"smaps-{when}.txt"), "w") as dst,
        ):
            dst.write(src.read())


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run(args, port: int, pid: int, metrics_port: int) -> dict:
    soak = Soak(args, port)
    async with AsyncSegmenterClient(soak.target, timeout=900) as c:
        unloaded, unloaded_dataset = [], []
        for _ in range(args.unloaded):
            t0 = time.perf_counter()
            await c.segment(soak.photo, **soak.good)
            unloaded.append((time.perf_counter() - t0) * 1000)
        for i in range(args.unloaded):
            assert await soak.dataset_request(c, distinct_image(10_000 + i)) == "OK"
        unloaded_dataset, soak.dataset_ms = soak.dataset_ms, []
        sequential = proc_status(pid)
        # Warm-up at the load's concurrency: the working set the server keeps for the load it
        # admits is reached here, so "start" is the warmed-up steady state that the end is
        # compared with.
        for r in range(args.warmup_rounds):
            images = [distinct_image(20_000 + r * 100 + i) for i in range(args.window)]
            await asyncio.gather(*[soak.dataset_request(c, img) for img in images])
        soak.dataset_ms, soak.failed_after_accepted = [], []
    start = proc_status(pid)
    await asyncio.sleep(args.pause)
    start_idle = proc_status(pid)
    dump_smaps(args, pid, "start")
    tasks0 = metric(metrics_port, "seglabel_asyncio_tasks")
    peak = start["VmRSS"]
    until = time.monotonic() + args.duration
    clients = [asyncio.create_task(soak.client(until)) for _ in range(args.clients)]
    clients += [asyncio.create_task(soak.dataset_worker(until)) for _ in range(args.window)]
    timeline = []
    while not all(t.done() for t in clients):
        rss = proc_status(pid)["VmRSS"]
        peak = max(peak, rss)
        timeline.append(rss)
        await asyncio.sleep(1.0)
    for t in clients:
        t.result()
    end_loaded = proc_status(pid)
    await asyncio.sleep(args.pause)
    end = proc_status(pid)
    dump_smaps(args, pid, "end")
    return {
        "soak": soak,
        "unloaded_ms": unloaded,
        "unloaded_dataset_ms": unloaded_dataset,
        "rss_mb": (start["VmRSS"] / 1024, peak / 1024, end_loaded["VmRSS"] / 1024),
        "rss_idle_mb": (start_idle["VmRSS"] / 1024, end["VmRSS"] / 1024),
        "timeline_mb": [v / 1024 for v in timeline],
        "rss_sequential_mb": sequential["VmRSS"] / 1024,
        "threads": (start_idle["Threads"], end["Threads"]),
        "fds": (start_idle["fds"], end["fds"]),
        "tasks": (tasks0, metric(metrics_port, "seglabel_asyncio_tasks")),
        "inflight_end": metric(metrics_port, "seglabel_requests_in_flight"),
        "budget_end": metric(metrics_port, "seglabel_memory_budget_used_bytes"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds of mixed load (at most 3600)")
    ap.add_argument(
        "--clients", type=int, default=4, help="clients mixing good, cancelled, slow and bad requests"
    )
    ap.add_argument("--window", type=int, default=12, help="a dataset job's requests in flight (0: none)")
    ap.add_argument("--window-masks", type=int, default=24, help="labelled masks per dataset request")
    ap.add_argument("--dataset-priority", default="batch", choices=("batch", "default", "interactive", ""),
                    help="the dataset requests' class, as seglabel label sends it ('': unset, a grid's default)")  # fmt: skip
    ap.add_argument(
        "--max-inflight", type=int, default=0, help="the server's admitted concurrency (0: window + clients)"
    )
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--masks", type=int, default=24)
    ap.add_argument("--unloaded", type=int, default=5, help="good requests timed alone first")
    ap.add_argument(
        "--warmup-rounds", type=int, default=2, help="then rounds of max-inflight concurrent good requests"
    )
    ap.add_argument("--slow-s", type=float, default=2.0, help="a slow reader's pause between events")
    ap.add_argument("--pause", type=float, default=10.0, help="idle seconds before the final RSS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smaps", default="", help="folder for the server's smaps at start and end")
    ap.add_argument("server_args", nargs="*", help="extra seglabel-server flags (after --)")
    args = ap.parse_args()
    args.duration = min(args.duration, 3600.0)
    args.max_inflight = args.max_inflight or args.window + args.clients
    random.seed(args.seed)
    port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "seglabel_server.transport.server", "--models", args.models, "--port", str(port),
           "--metrics-port", str(metrics_port), "--max-inflight", str(args.max_inflight), *args.server_args]  # fmt: skip
    log = open(os.environ.get("SOAK_LOG", "/tmp/seglabel-soak-server.log"), "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        with SegmenterClient(f"127.0.0.1:{port}") as c:
            c.wait_ready(timeout=900)
        t0 = time.perf_counter()
        r = asyncio.run(run(args, port, server.pid, metrics_port))
        wall = time.perf_counter() - t0
        alive = server.poll() is None
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    soak: Soak = r["soak"]
    print(f"soak: {args.duration:.0f} s of load: a dataset window of {args.window} (grid 16, up to "
          f"{args.window_masks} labelled masks, distinct images, class {args.dataset_priority or 'unset'}) and "
          f"{args.clients} mixed clients; server "
          f"admits {args.max_inflight}; {wall:.0f} s in all")  # fmt: skip
    kinds = sorted({k for k, _ in soak.statuses})
    codes = sorted({c for _, c in soak.statuses})
    print(f"{'requests':<10}" + "".join(f"{c:>20}" for c in codes))
    for k in kinds:
        print(f"{k:<10}" + "".join(f"{soak.statuses.get((k, c), 0):>20}" for c in codes))
    total = Counter()
    for (_, c), n in soak.statuses.items():
        total[c] += n
    print("all       " + "".join(f"{total.get(c, 0):>20}" for c in codes))
    print(f"dataset requests failed after accepted: {len(soak.failed_after_accepted)} "
          f"{soak.failed_after_accepted[:5]}")  # fmt: skip
    for name, loaded, alone in (("dataset", soak.dataset_ms, r["unloaded_dataset_ms"]),
                                ("good", soak.good_ms, r["unloaded_ms"])):  # fmt: skip
        if not loaded or not alone:
            continue
        un99 = pct(alone, 99)
        g50, g99 = pct(loaded, 50), pct(loaded, 99)
        print(f"{name} requests: unloaded p50 {statistics.median(alone):.0f} ms p99 {un99:.0f} ms; under load "
              f"p50 {g50:.0f} ms p99 {g99:.0f} ms ({g99 / un99:.2f}x unloaded p99), {len(loaded)} answered")  # fmt: skip
    s, p, e = r["rss_mb"]
    si, ei = r["rss_idle_mb"]
    q = r["rss_sequential_mb"]
    tl = r["timeline_mb"]
    quarters = [tl[min(len(tl) - 1, int(len(tl) * f))] for f in (0.25, 0.5, 0.75)] + [tl[-1]] if tl else []
    print(f"server RSS: after {args.unloaded} sequential requests {q:.0f} MB; loaded: after {args.warmup_rounds} "
          f"warm-up rounds of {args.window} {s:.0f} MB, at 1/4, 1/2, 3/4 and the end of the load "
          f"{', '.join(f'{v:.0f}' for v in quarters)} MB, peak {p:.0f} MB, right after the load {e:.0f} MB "
          f"(end/start {e / s:.2f}); idle ({args.pause:.0f} s after): after warm-up {si:.0f} MB, at the end "
          f"{ei:.0f} MB (end/start {ei / si:.2f})")  # fmt: skip
    print(f"threads {r['threads'][0]} -> {r['threads'][1]}; open files {r['fds'][0]} -> {r['fds'][1]}; "
          f"asyncio tasks {r['tasks'][0]:.0f} -> {r['tasks'][1]:.0f}; in flight at the end {r['inflight_end']:.0f}; "
          f"memory budget charged at the end {r['budget_end']:.0f} B")  # fmt: skip
    bad = total.get("UNKNOWN", 0) + total.get("INTERNAL", 0)
    print(f"server alive through the run: {alive}; exit code on SIGTERM: {code}; UNKNOWN+INTERNAL: {bad}")
    return 0 if alive and code == 0 and bad == 0 and not soak.failed_after_accepted else 1


if __name__ == "__main__":
    sys.exit(main())
