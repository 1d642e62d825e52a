"""One request's memory: a real server (child process, the embedded default unless flags after
``--`` say otherwise) answers one big grid request at a time, and this prints, per request, the
server's peak RSS over its idle level just before (the kernel's high-water mark, reset before each
request through /proc/PID/clear_refs), its RSS a few seconds after, and the memory budget's
estimate for the request (what the ``seglabel_memory_budget_used_bytes`` gauge rises by while it
runs: its own charge, plus the runtime's arena if the request makes it grow) against the measured
peak.

    python scripts/bench_memory.py --models models                       # make bench-memory
    python scripts/bench_memory.py --models models --grids 16,32,64 --sizes 1000,2000 --labels off

The request is the one that makes the most masks: thresholds 0, NMS off, ``--masks`` (the
server's ceiling, 1000) masks, no overlay, on distinct images (a photo resized, then shifted per
request so that no cache answers). Random weights make ragged masks: their RLE is far larger than
a real mask's, so these peaks are an upper side of what real weights give.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time

import numpy as np
from benchlib import metric, photo, server_process
from PIL import Image
from seglabel_client.bench import free_port
from seglabel_client.client import SegmenterClient

MB = 1 << 20


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Watch(threading.Thread):
    """Samples RSS (when the high-water mark cannot be reset) and the budget gauge while a request runs."""

    def __init__(self, pid: int, metrics_port: int):
        super().__init__(daemon=True)
        self.pid, self.port = pid, metrics_port
        self.rss_kb = 0
        self.charged = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.rss_kb = max(self.rss_kb, status_kb(self.pid, "VmRSS"))
            try:
                self.charged = max(self.charged, metric(self.port, "seglabel_memory_budget_used_bytes"))
            except OSError:
                pass
            self.stop.wait(0.05)


def measure(c, pid: int, metrics_port: int, image: bytes, kw: dict, args):
    """One request on an idle server: (masks, seconds, idle KB, peak KB, after KB, budget bytes)."""
    time.sleep(args.settle)  # past the server's --idle-release-s
    idle = status_kb(pid, "VmRSS")
    held = metric(metrics_port, "seglabel_memory_budget_used_bytes")  # the runtime's arena, charged once
    hwm = reset_peak(pid)
    watch = Watch(pid, metrics_port)
    watch.start()
    t0 = time.perf_counter()
    if args.stream:
        masks = sum(
            len(ev.masks.masks) for ev in c.stream_segment(image, **kw) if ev.WhichOneof("event") == "masks"
        )
    else:
        masks = len(c.segment(image, **kw).masks)
    seconds = time.perf_counter() - t0
    watch.stop.set()
    watch.join()
    peak = status_kb(pid, "VmHWM") if hwm else watch.rss_kb
    time.sleep(args.settle)
    return masks, seconds, idle, peak, status_kb(pid, "VmRSS"), watch.charged - held


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--grids", default="32", help="points per side, comma-separated")
    ap.add_argument("--sizes", default="1000", help="square image sides, comma-separated (1000: 1 MP)")
    ap.add_argument("--labels", default="off,on", help="off, on or both (comma-separated)")
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--stream", action="store_true", help="StreamSegment instead of Segment")
    ap.add_argument(
        "--floor", action="store_true", help="also the same request for 1 mask: what the masks themselves add"
    )
    ap.add_argument(
        "--settle",
        type=float,
        default=8.0,
        help="idle seconds before the idle RSS and the RSS after (past --idle-release-s and the encoder run "
        "that refills the arena after a release)",
    )
    ap.add_argument("server_args", nargs="*", help="extra seglabel-server flags (after --)")
    args = ap.parse_args()
    port, metrics_port = free_port(), free_port()
    flags = [
        "--models",
        args.models,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
        *args.server_args,
    ]
    rows, ok = [], True
    with server_process(flags, os.environ.get("BENCH_LOG", "/tmp/seglabel-bench-memory.log")) as server:
        with SegmenterClient(f"127.0.0.1:{port}", timeout=3600) as c:
            hwm = reset_peak(server.pid)
            n = 0
            for size in (int(s) for s in args.sizes.split(",")):
                base = photo(size, size)
                for grid in (int(g) for g in args.grids.split(",")):
                    for labels in args.labels.split(","):
                        n += 1
                        image = png(np.roll(base, 7 * n, axis=1))  # distinct bytes: no cache hit
                        kw = dict(points_per_side=grid, max_masks=args.masks, overlay=False,
                                  skip_labels=labels == "off", pred_iou_thresh=0.0,
                                  stability_score_thresh=0.0, box_nms_thresh=1.0)  # fmt: skip
                        floor = None
                        if args.floor:  # the same request for 1 mask, on another image, first
                            n += 1
                            one = png(np.roll(base, 7 * n, axis=1))
                            floor = measure(c, server.pid, metrics_port, one, dict(kw, max_masks=1), args)
                        m = measure(c, server.pid, metrics_port, image, kw, args)
                        masks, seconds, idle, peak, after, charged = m
                        rows.append((size, grid, labels, masks, seconds, idle, peak, after, charged))
                        one = (
                            f" | 1 mask: peak +{(floor[3] - floor[2]) / 1024:4.0f} MB, so {masks} masks add "
                            f"{(peak - idle - floor[3] + floor[2]) / 1024:+4.0f} MB"
                            if floor else ""
                        )  # fmt: skip
                        print(
                            f"{size}x{size} grid {grid:>2} labels {labels:<3} {masks:>4} masks {seconds:6.1f} s | "
                            f"idle {idle / 1024:6.0f} MB, peak +{(peak - idle) / 1024:6.0f} MB, after "
                            f"{(after - idle) / 1024:+5.0f} MB | budget estimate {charged / MB:6.0f} MB = "
                            f"{charged / max(1, (peak - idle) * 1024):.2f}x the peak{one}",
                            flush=True,
                        )
    print(f"peak: {'VmHWM reset per request' if hwm else 'RSS sampled every 50 ms'}; "
          f"{'StreamSegment' if args.stream else 'Segment'}; server: {' '.join(flags)}")  # fmt: skip
    for row in rows:
        idle, peak, charged = row[5], row[6], row[8]
        ok &= charged >= (peak - idle) * 1024
    print("budget estimate >= peak for every request:", ok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
