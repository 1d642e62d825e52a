"""``seglabel label`` against the server's own saturation throughput, and the client's memory.

1. A real server (child process, the embedded default, embedding cache off so that no pass is
   answered from an earlier one) and a folder of ``--images`` distinct images (crops of the bundled
   photos). ``seglabel-bench``'s request loop (``seglabel_client.bench.run_level``) runs every image
   once at each ``--concurrency``; the best images/s is the server's saturation throughput. Then
   ``seglabel label`` runs over the same folder (a child process, its RSS sampled), and the script
   prints its images/s as a ratio of that best (the same images, options and server, this run).
2. The client's memory: ``seglabel label`` over ``--small`` and ``--large`` images (crops
   repeated with a changed pixel each, so every file is distinct), its peak RSS for each.

    python scripts/bench_label.py --models models --images 40 --grid 8
    python scripts/bench_label.py --models <tiny repo> --images 40 --grid 4 --small 10 --large 200
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import photo, server_process
from seglabel_api.options import SegmentOptions
from seglabel_client.bench import free_port, run_level
from seglabel_client.client import SegmenterClient


def write_folder(root: Path, n: int, size=(480, 640)) -> None:
    """n distinct PNGs: 640x480 crops of two bundled photos at their own offsets, and past the
    crops' count the same crops with one pixel changed (distinct bytes)."""
    from PIL import Image

    bases = [photo(800, 600, "astronaut.jpg"), photo(800, 600, "coffee.jpg")]
    h, w = size
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = bases[i % 2]
        k = i % 48
        y, x = (k * 37) % (base.shape[0] - h), (k * 53) % (base.shape[1] - w)
        img = np.ascontiguousarray(base[y : y + h, x : x + w])
        img[0, 0] = (i % 256, i // 256 % 256, 7)
        sub = root / f"part{i % 4}"
        sub.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        (sub / f"{i:05d}.png").write_bytes(buf.getvalue())


def label(target: str, root: Path, out: Path, args, window: int) -> tuple[float, int, dict]:
    """(seconds, peak RSS KB of the client process, report) of one ``seglabel label`` run."""
    import json

    cmd = [sys.executable, "-m", "seglabel_client.cli", "--server", target, "label", str(root), "--out", str(out),
           "--grid", str(args.grid), "--max-masks", str(args.max_masks), "--window", str(window), "--quiet",
           "--restart"]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    peak = [0]

    def watch():
        while proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    rc = proc.wait()
    t.join()
    if rc != 0:
        raise SystemExit(f"seglabel label exited {rc}")
    return time.perf_counter() - t0, peak[0], json.loads((out / "report.json").read_text())


def ray_rates(root: Path, tmp: Path, args) -> None:
    """seglabel-ray label over the folder on a local Ray cluster, one CPU and one runtime thread per
    actor, for each actor count: images/s (actors' model loading included, as a user waits for it)."""
    import ray
    from seglabel_api.datasets.job import dataset_request
    from seglabel_client.dataset import LabelOptions
    from seglabel_server.transport.ray import datasets

    counts = [int(n) for n in args.ray_actors.split(",")]
    ray.init(num_cpus=max(counts), include_dashboard=False, logging_level="WARNING")
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        for n in counts:
            opts = LabelOptions(dataset_request(points_per_side=args.grid, max_masks=args.max_masks))
            t0 = time.perf_counter()
            report = datasets.label(str(root), tmp / f"ray{n}", opts, {"models": args.models, "threads": 1,
                                    "embedding_cache_mb": 0}, actors=n, num_cpus=1, batch_size=4)  # fmt: skip
            seconds = time.perf_counter() - t0
            print(f"seglabel-ray label, {n} actor(s) of 1 CPU: {report['labelled_this_run']} images in "
                  f"{seconds:6.1f} s = {report['labelled_this_run'] / seconds:.3f} images/s", flush=True)  # fmt: skip
    finally:
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--max-masks", type=int, default=32)
    ap.add_argument("--concurrency", default="2,4,8", help="seglabel-bench levels (the best is the baseline)")
    ap.add_argument("--window", type=int, default=8, help="seglabel label's requests in flight")
    ap.add_argument("--small", type=int, default=0, help="client memory: a run over this many images ...")
    ap.add_argument("--large", type=int, default=0, help="... and over this many")
    ap.add_argument(
        "--ray-actors", default="", help="also seglabel-ray label with these actor counts (e.g. 1,2)"
    )
    ap.add_argument("server_args", nargs="*", help="extra seglabel-server flags (after --)")
    args = ap.parse_args()
    port = free_port()
    target = f"127.0.0.1:{port}"
    flags = ["--models", args.models, "--port", str(port), "--embedding-cache-mb", "0", *args.server_args]
    with server_process(flags, os.environ.get("BENCH_LOG", "/tmp/seglabel-bench-label.log")):
        with SegmenterClient(target) as c:
            random_weights = c.server_info().random_weights
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "images"
            write_folder(root, args.images)
            files = sorted(root.rglob("*.png"))
            data = [p.read_bytes() for p in files]
            kw = SegmentOptions(points_per_side=args.grid, max_masks=args.max_masks)
            best = (0.0, 0)
            for conc in (int(c) for c in args.concurrency.split(",")):
                samples, errors, wall = asyncio.run(run_level(target, data, conc, len(data), 0, kw))
                rate = len(samples) / wall
                print(f"seglabel-bench concurrency {conc:>2}: {len(samples)} images in {wall:6.1f} s = "
                      f"{rate:.3f} images/s ({errors} errors)", flush=True)  # fmt: skip
                best = max(best, (rate, conc))
            seconds, rss, report = label(target, root, Path(tmp) / "out", args, args.window)
            rate = report["labelled_this_run"] / seconds
            print(f"seglabel label --window {args.window}: {report['labelled_this_run']} images in {seconds:6.1f} s "
                  f"(process start included) = {rate:.3f} images/s = {rate / best[0]:.2f}x seglabel-bench's best "
                  f"({best[0]:.3f} at concurrency {best[1]}); client peak RSS {rss / 1024:.0f} MB", flush=True)  # fmt: skip
            if args.ray_actors:
                ray_rates(root, Path(tmp), args)
            for n in (args.small, args.large):
                if n:
                    folder = Path(tmp) / f"mem{n}"
                    write_folder(folder, n, size=(96, 128))
                    seconds, rss, report = label(target, folder, Path(tmp) / f"out{n}", args, args.window)
                    print(
                        f"client memory: {n:>4} images in {seconds:6.1f} s, peak RSS {rss / 1024:6.1f} MB",
                        flush=True,
                    )
        print(f"server: {' '.join(flags)}; grid {args.grid}, max_masks {args.max_masks}, labels on"
              + ("; RANDOM WEIGHTS" if random_weights else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
