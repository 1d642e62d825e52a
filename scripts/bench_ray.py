"""Scaling on Ray Serve: the same load against 1 replica x 1 CPU and 2 replicas x 1 CPU on one local
Ray cluster (this machine's cores), same run, through Ray's gRPC proxy with the project's client.
Every request carries a different image (so no embedding-cache hit). Printed, never asserted.

    python scripts/bench_ray.py --models models [--requests 16 --concurrency 4 --grid 8]   # make bench-ray
"""

from __future__ import annotations

import argparse
import io
import statistics
import threading
import time

import numpy as np
from PIL import Image
from seglabel_client import sample_image_bytes
from seglabel_client.bench import free_port
from seglabel_client.client import SegmenterClient


def variants(n: int, photo: str) -> list[bytes]:
    img = np.asarray(Image.open(io.BytesIO(sample_image_bytes(photo))).convert("RGB"))
    out = []
    for i in range(n):
        v = img.copy()
        v[0, 0] = (i % 256, (i * 7) % 256, (i * 13) % 256)
        buf = io.BytesIO()
        Image.fromarray(v).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def load(target: str, images: list[bytes], concurrency: int, request: dict) -> tuple[list[float], float]:
    todo, lock, lat = list(images), threading.Lock(), []

    def worker():
        with SegmenterClient(target, timeout=600) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    img = todo.pop()
                t0 = time.perf_counter()
                c.segment(img, **request)
                with lock:
                    lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--max-masks", type=int, default=16)
    ap.add_argument("--photo", default="astronaut.jpg")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--no-pin", action="store_true", help="do not bind each replica to its own core")
    ap.add_argument("--compare-batching", action="store_true",
                    help="instead: 2 replicas with the server's cross-request batching on, off, on")  # fmt: skip
    args = ap.parse_args()

    import ray
    from ray import serve
    from seglabel_server.transport.ray import app as ray_app

    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    port = free_port()
    # random weights keep no mask under the default filters: lowered, so that masks are made and labelled
    request = dict(points_per_side=args.grid, max_masks=args.max_masks, overlay=False,
                   pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1)  # fmt: skip
    rows = []
    try:
        plan = (
            [(2, True), (2, False), (2, True)] if args.compare_batching else [(1, True), (2, True), (1, True)]
        )
        for replicas, batching in plan:
            t0 = time.perf_counter()
            server = {"models": args.models, "batching": batching}
            ray_app.start({"server": server, "num_replicas": replicas, "num_cpus": 1, "pin_cpus": not args.no_pin},
                          grpc_port=port, http_port=free_port())  # fmt: skip
            ready = time.perf_counter() - t0
            target = f"127.0.0.1:{port}"
            load(target, variants(replicas * 2, "coffee.jpg"), replicas * 2, request)  # warm every replica
            lat, wall = load(target, variants(args.requests, args.photo), args.concurrency, request)
            lat.sort()
            rows.append(
                (
                    replicas,
                    batching,
                    len(lat) / wall,
                    statistics.median(lat),
                    lat[min(len(lat) - 1, int(0.99 * len(lat)))],
                    wall,
                    ready,
                )
            )
            print(f"  {replicas} replica(s), batching {batching}: {rows[-1][2]:.3f} req/s, p50 {rows[-1][3]:.2f}s "
                  f"(deployed in {ready:.0f}s)", flush=True)  # fmt: skip
    finally:
        serve.shutdown()
        ray.shutdown()
    pinned = "not pinned" if args.no_pin else "each replica pinned to its own core"
    print(f"\nRay Serve, {args.cpus}-CPU local cluster, 1 CPU per replica ({pinned}; ONNX Runtime 1 thread, CPU stages 1 thread); "
          f"{args.requests} requests, {args.concurrency} clients, grid {args.grid}, up to {args.max_masks} labelled masks, "
          f"{args.photo} variants")  # fmt: skip
    print(f"{'replicas':>8} {'batching':>8} {'req/s':>8} {'p50 s':>8} {'p99 s':>8} {'wall s':>8}")
    for r, b, thr, p50, p99, wall, _ in rows:
        print(f"{r:>8} {'on' if b else 'off':>8} {thr:>8.3f} {p50:>8.2f} {p99:>8.2f} {wall:>8.1f}")
    first = [t for r, b, t, *_ in rows if (b if args.compare_batching else r == 1)]
    second = [t for r, b, t, *_ in rows if ((not b) if args.compare_batching else r == 2)]
    what = "batching off / on" if args.compare_batching else "2 replicas / 1 replica"
    print(
        f"throughput {what}: {statistics.mean(second) / statistics.mean(first):.2f}x (first and last runs averaged)"
    )


if __name__ == "__main__":
    main()
