"""A click on a server busy with a dataset job's requests, on real tiny models: each request's class
reaches the scheduler (the click's items as interactive, the job's as batch, a grid without one as
default: the per-class wait in the metrics), the click is answered while the job runs, and the job's
requests all finish. The order itself is proved with a fake backend whose batches are held
(tests/unit/test_priority.py): the tiny models leave the stage queues nearly empty (35 ms clicks either
way), and its effect on the full-size models is measured by scripts/bench_priority.py."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_client import sample_image_bytes
from seglabel_client.client import AsyncSegmenterClient

from tests.integration.conftest import in_flight, metric
from tests.system import free_port

LOOSE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def variant(i: int) -> bytes:
    img = np.asarray(Image.open(io.BytesIO(sample_image_bytes("coffee.jpg"))).convert("RGB")).copy()
    img[0, 0] = (i, 255 - i, 7)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


async def test_a_click_overtakes_a_dataset_jobs_queued_work(make_server):
    # one unit per batch: every queued item is its own model run, so the order of the queues shows
    server = await make_server(max_inflight=16, max_batch={"decoder": 1, "clip": 1, "encoder": 1})
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=300) as c:
        photo = await c.upload(sample_image_bytes("astronaut.jpg"))
        await c.segment(file_id=photo.file_id, prompt_type="points", points=[(200, 200)], overlay=False)
        # the job: distinct images (no cached embedding), big grids, batch class as seglabel label sends
        jobs = [
            asyncio.ensure_future(c.segment(image=variant(i), points_per_side=32, max_masks=60, overlay=False,
                                            priority="batch", **LOOSE))
            for i in range(6)
        ]  # fmt: skip
        while in_flight(server) < 6:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # their encoder and decoder work is queued
        # visible: what waits, per stage and class, in GetServerInfo and /metrics
        queued = [q for q in (await c.server_info()).queues if q.priority == pb.PRIORITY_BATCH]
        assert queued and all(q.depth >= 1 and q.oldest_wait_ms > 0 for q in queued)
        gauge = sum(
            metric(server, "seglabel_class_queue_depth", stage=q.stage, priority="batch") for q in queued
        )
        assert gauge >= 1
        t0 = time.perf_counter()
        click = await c.segment(
            file_id=photo.file_id, prompt_type="points", points=[(250, 220)], overlay=False
        )
        click_s = time.perf_counter() - t0
        running = sum(not j.done() for j in jobs)
        t1 = time.perf_counter()
        done = await asyncio.gather(*jobs)
        rest_s = time.perf_counter() - t1
    assert click.masks and all(r.masks for r in done)  # nothing admitted was dropped
    print("CLICK", click_s, "RUNNING", running, "REST", rest_s)
    assert running >= 4, (running, click_s, rest_s)  # the click did not wait for the job
    assert click_s < rest_s
    waited = metric(
        server, "seglabel_class_queue_duration_seconds_count", stage="decoder", priority="interactive"
    )
    assert (
        waited >= 1
        and metric(server, "seglabel_class_queue_duration_seconds_count", stage="decoder", priority="batch")
        >= 6
    )


async def test_a_token_caps_the_class_its_callers_may_ask_for(make_server, tmp_path):
    """A tokens file with the team's token and a batch-only job token: the job token's explicit
    interactive request is refused (PERMISSION_DENIED over gRPC, 403 over HTTP), its click runs
    as batch work, and the team token's click stays interactive."""
    (tmp_path / "tokens").write_text("# team\nteam-s3cret\njob-s3cret batch  # nightly job\n")
    port = free_port()
    server = await make_server(auth_token_file=str(tmp_path / "tokens"), http_port=port)
    target = f"127.0.0.1:{server.port}"
    click = {"prompt_type": "points", "points": [(200, 200)], "overlay": False, "skip_labels": True}

    def decoder_runs(cls: str) -> float:
        return metric(server, "seglabel_class_queue_duration_seconds_count", stage="decoder", priority=cls)

    async with AsyncSegmenterClient(target, timeout=120, token="job-s3cret") as job:
        photo = await job.upload(sample_image_bytes("astronaut.jpg"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await job.segment(file_id=photo.file_id, priority="interactive", **click)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "batch at best" in refused.value.details()
        before = decoder_runs("batch")
        assert (await job.segment(file_id=photo.file_id, **click)).masks
        assert decoder_runs("batch") == before + 1  # the click ran as the token's class
    async with AsyncSegmenterClient(target, timeout=120, token="team-s3cret") as team:
        before = decoder_runs("interactive")
        assert (await team.segment(file_id=photo.file_id, **click)).masks
        assert decoder_runs("interactive") == before + 1

    def http(token: str, priority: str) -> int:
        body = {"file_id": photo.file_id, "prompt_type": "points", "points": [{"x": 200, "y": 200}],
                "skip_labels": True, "priority": priority}  # fmt: skip
        return requests.post(f"http://127.0.0.1:{port}/segment", json=body,
                             headers={"authorization": f"Bearer {token}"}, timeout=120).status_code  # fmt: skip

    assert await asyncio.to_thread(http, "job-s3cret", "interactive") == 403
    assert await asyncio.to_thread(http, "job-s3cret", "batch") == 200
    assert await asyncio.to_thread(http, "team-s3cret", "interactive") == 200


def nice_of(tid: int) -> int:
    """A thread's nice value as the kernel keeps it (/proc/self/task/<tid>/stat, field 19)."""
    stat = open(f"/proc/self/task/{tid}/stat").read()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
async def test_the_interactive_lane_has_its_own_sessions_and_batch_work_a_lower_priority(make_server):
    """ONNX Runtime on the CPU: the lane runs the models a click needs on sessions of its own
    (the encoder shared), at the server's priority; the batch workers and the thread pools of their
    sessions run at nice +10 (the kernel gives the cores to a click first). Off: one set of sessions,
    one priority."""
    server = await make_server()
    loaded = server.service.lifecycle.loaded
    sched = loaded.pipeline.scheduler
    own = {
        m
        for m, g in sched.lane_executor.backend.graphs.items()
        if g.handle is not loaded.backend.graphs[m].handle
    }
    assert own == {"sam2_mask_decoder", "clip_image_encoder", "clip_text_encoder"}
    base = os.getpriority(os.PRIO_PROCESS, 0)
    niced = {t.name: nice_of(t.native_id) for t in sched.threads}
    assert niced == {"seglabel-inference": base + 10, "seglabel-inference-interactive": base}, niced
    # ONNX Runtime's pool threads (unnamed, made when the sessions opened) beside the workers
    pools = [nice_of(int(t)) for t in os.listdir("/proc/self/task")]
    assert pools.count(base + 10) > 1

    plain = await make_server(interactive_lane=False)
    sched = plain.service.lifecycle.loaded.pipeline.scheduler
    assert sched.lane_executor is sched.executor
    assert {nice_of(t.native_id) for t in sched.threads} == {base}


async def test_two_label_runs_take_turns_as_two_jobs(make_server, tmp_path):
    """Two seglabel label runs of one options object in one process (their channels share a
    connection) reach the scheduler as two jobs of the batch class, each its own fair-share key."""
    from seglabel_client.dataset import LabelOptions, label_folder_async

    server = await make_server()
    target = f"127.0.0.1:{server.port}"
    for name in "ab":
        (tmp_path / name).mkdir()
        for i in range(2):
            (tmp_path / name / f"{i}.png").write_bytes(variant(i + (10 if name == "b" else 0)))
    opts = LabelOptions(window=2)
    await asyncio.gather(
        *(label_folder_async(tmp_path / n, tmp_path / f"{n}-out", target, opts) for n in "ab")
    )
    shares = [s for s in server.service.admission.fair.last if s.startswith("label-")]
    assert len(shares) == 2, shares
    assert (
        metric(server, "seglabel_class_queue_duration_seconds_count", stage="encoder", priority="batch") >= 4
    )
