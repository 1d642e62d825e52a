"""What the benchmark scripts share: the photo they run on, the predicted-IoU threshold that fixes
the number of masks on random weights, a server as a child process, and a server's metric (a free
port is ``seglabel_client.bench.free_port``)."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image
from seglabel_api import sample_image_bytes
from seglabel_client.client import SegmenterClient
from seglabel_server import amg
from seglabel_server.models import images
from seglabel_server.models.kinds import sam2


def photo(width: int, height: int, name: str = "astronaut.jpg") -> np.ndarray:
    """A bundled photo resized (bicubic) to ``width`` x ``height``, RGB uint8."""
    img = images.decode_image(sample_image_bytes(name))
    return np.asarray(Image.fromarray(img).resize((width, height), Image.BICUBIC))


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """RGB uint8 as JPEG bytes (what a client sends)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def choose_iou(backend, repo, image: np.ndarray, grid: int, masks: int, chunk: int = 64) -> tuple[float, int]:
    """The predicted-IoU threshold that lets about ``masks`` of the grid's 3 x N candidates through
    (random weights keep nothing at sam2's defaults), and how many prompts have a candidate above it
    (the ones the decoder upscales). The decoder runs ``chunk`` prompts per call."""
    s = repo.sam2["image_size"]
    x = images.sam_preprocess(image, s, repo.sam2["pixel_mean"], repo.sam2["pixel_std"])[None]
    feats = sam2.encode(backend, x)[0]
    pts = amg.build_point_grid(grid) * np.array([image.shape[1], image.shape[0]])
    coords = amg.to_model_coords(pts, image.shape[:2], s)[:, None]
    per_prompt = np.concatenate(
        [
            sam2.decode(
                backend, feats, coords[i : i + chunk], np.ones((len(coords[i : i + chunk]), 1), np.int32)
            ).iou
            for i in range(0, len(coords), chunk)
        ]
    )
    ious = np.sort(per_prompt.ravel())[::-1]
    k = min(masks, len(ious) - 1)
    thr = float((ious[k - 1] + ious[k]) / 2)
    return thr, int((per_prompt.max(axis=1) > thr).sum())


def metric(port: int, name: str) -> float:
    """One unlabelled sample of a server's Prometheus metrics (``--metrics-port``), NaN if absent."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


@contextlib.contextmanager
def server_process(flags: list[str], log_path: str | None = None, command: list[str] | None = None):
    """``seglabel-server`` (or ``command``: another program serving gRPC) with ``flags`` (``--port``
    among them) as a child process, yielded once it is SERVING; terminated on exit (killed if it has
    not stopped within 60 s). Its output goes to ``log_path``, or nowhere."""
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    command = command or [sys.executable, "-m", "seglabel_server"]
    proc = subprocess.Popen([*command, *flags], stdout=log, stderr=subprocess.STDOUT)
    try:
        with SegmenterClient(f"127.0.0.1:{flags[flags.index('--port') + 1]}") as c:
            c.wait_ready(timeout=900)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


class StackSampler:
    """Where every Python thread of this process spends its time: each thread's stack sampled every
    ``interval`` seconds (a thread inside a torch op or a C library shows the line that called it).
    torch's profiler records CPU operators only on the thread that started it, and the pipeline runs
    on pool and worker threads; this sees them all."""

    def __init__(self, interval: float = 0.002, depth: int = 6):
        self.interval, self.depth = interval, depth
        self.counts: dict[tuple, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)

    def _run(self) -> None:
        me = threading.get_ident()
        names = {}
        while not self._stop.wait(self.interval):
            names.update({t.ident: t.name for t in threading.enumerate()})
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack, f = [], frame
                while f is not None and len(stack) < self.depth:
                    if f.f_code.co_name not in ("_call_impl", "_wrapped_call_impl"):  # nn.Module plumbing
                        stack.append(f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}")
                    f = f.f_back
                key = (names.get(ident, str(ident)).split("_")[0], tuple(stack))
                self.counts[key] = self.counts.get(key, 0) + 1
            self.samples += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, top: int = 40) -> str:
        """The most sampled stacks (innermost frame first), with their share of the samples; idle
        waits (a thread parked in a queue, a selector or a lock) are left out."""
        idle = ("wait", "select", "_worker", "get", "poll", "run_forever", "_run_once", "sleep")
        rows = sorted(self.counts.items(), key=lambda kv: -kv[1])
        out = [f"{self.samples} samples every {self.interval * 1000:.0f} ms"]
        for (thread, stack), n in rows:
            if not stack or stack[0].split()[-1] in idle:
                continue
            out.append(f"{100 * n / max(self.samples, 1):5.1f}%  [{thread}]  " + "  <  ".join(stack))
            if len(out) > top:
                break
        return "\n".join(out)
