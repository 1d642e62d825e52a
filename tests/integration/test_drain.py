"""SIGTERM drains a real server process: health NOT_SERVING, new requests UNAVAILABLE, the request in
flight completes, exit 0; a second signal exits at once."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from PIL import Image
from seglabel_client.client import SegmenterClient

from tests.system import free_port

pytestmark = pytest.mark.slow  # server processes signalled and drained

# In flight for seconds: 3.4 s on the tiny models on this project's 2-core machine (2026-12-08; grid
# 12 at 1500 px took 0.84 s once the per-mask loops were compiled, and could end before the signal)
HEAVY = dict(points_per_side=32, max_masks=1000, skip_labels=True, overlay=False, pred_iou_thresh=0,
             stability_score_thresh=0, box_nms_thresh=1)  # fmt: skip


@pytest.fixture
def heavy_image(photo) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo).resize((2000, 2000)).save(buf, format="JPEG")
    return buf.getvalue()


def start(tiny_repo, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "seglabel_server.transport.server", "--models", str(tiny_repo), "--port", str(port),
         "--drain-seconds", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def in_flight(client: SegmenterClient, image: bytes) -> tuple[threading.Thread, dict]:
    """A heavy request, streamed so that the caller knows when the server has admitted it (its
    ``accepted`` event); ``out["resp"]`` is the final summary."""
    out: dict = {}
    admitted = threading.Event()

    def run():
        try:
            for ev in client.stream_segment(image, **HEAVY):
                admitted.set()
                if ev.WhichOneof("event") == "summary":
                    out["resp"] = ev.summary
        except grpc.RpcError as exc:
            out["error"] = exc
        finally:
            admitted.set()

    th = threading.Thread(target=run)
    th.start()
    assert admitted.wait(60), "the heavy request was never admitted"
    time.sleep(0.3)  # and is being served
    return th, out


def test_sigterm_drains_then_exits_zero(tiny_repo, heavy_image, photo_bytes):
    port = free_port()
    proc = start(tiny_repo, port)
    try:
        with SegmenterClient(f"127.0.0.1:{port}", timeout=120) as c:
            c.wait_ready(timeout=180)
            th, out = in_flight(c, heavy_image)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as err:
                c.segment(photo_bytes, points_per_side=2, max_masks=2)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
            assert c.health() == "NOT_SERVING"
            th.join(timeout=120)
            assert "resp" in out, out.get("error")
            assert out["resp"].mask_count > 100
        assert proc.wait(timeout=60) == 0
        log = proc.stdout.read()
        assert "draining" in log and "drained" in log
    finally:
        proc.kill()


def test_a_second_signal_exits_at_once(tiny_repo, heavy_image):
    port = free_port()
    proc = start(tiny_repo, port)
    try:
        with SegmenterClient(f"127.0.0.1:{port}", timeout=120) as c:
            c.wait_ready(timeout=180)
            th, _ = in_flight(c, heavy_image)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=10)
            assert code != 0 and time.perf_counter() - t0 < 5
            th.join(timeout=30)
    finally:
        proc.kill()
