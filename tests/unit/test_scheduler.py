"""Scheduling without models: the batch collector, stage choice, and the worker with a fake backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest
from seglabel_server.backends.base import Backend, BackendInfo, DecoderOutput, ImageFeatures, MaskLogits
from seglabel_server.errors import Cancelled, DeadlineExceeded, Overloaded
from seglabel_server.metrics import Metrics
from seglabel_server.scheduler import (
    BatchExecutor,
    Scheduler,
    StageConfig,
    WorkItem,
    collate_batch,
    pick_stage,
)
from seglabel_server.types import RequestContext


def item(size=1, key=None, ctx=None, stage="clip", enqueued=None):
    it = WorkItem(stage, payload=None, size=size, ctx=ctx or RequestContext(), key=key)
    if enqueued is not None:
        it.enqueued = enqueued
    return it


def test_collate_respects_max_size_and_order():
    q = deque(item(s) for s in (3, 3, 3, 1))
    batch, dropped = collate_batch(q, 7)
    assert [i.size for i in batch] == [3, 3] and not dropped
    assert [i.size for i in q] == [3, 1]


def test_collate_takes_an_oversized_item_alone():
    q = deque([item(100), item(1)])
    batch, _ = collate_batch(q, 8)
    assert [i.size for i in batch] == [100] and len(q) == 1


def test_collate_groups_by_key_and_keeps_the_rest_in_order():
    a1, b1, a2, b2 = item(1, key="a"), item(1, key="b"), item(1, key="a"), item(1, key="b")
    q = deque([a1, b1, a2, b2])
    batch, _ = collate_batch(q, 10)
    assert batch == [a1, a2] and list(q) == [b1, b2]


def test_collate_drops_cancelled_and_expired():
    cancelled, expired = RequestContext(), RequestContext(deadline=time.monotonic() - 1)
    cancelled.cancel()
    live = item()
    q = deque([item(ctx=cancelled), item(ctx=expired), live])
    batch, dropped = collate_batch(q, 10)
    assert batch == [live] and len(dropped) == 2 and not q


def test_collate_without_batching_takes_one_item():
    q = deque(item() for _ in range(5))
    batch, _ = collate_batch(q, 10, batching=False)
    assert len(batch) == 1 and len(q) == 4


def test_pick_stage_priority_and_delay():
    cfgs = {
        s: StageConfig(max_batch_size=4, max_queue_delay_ms=50)
        for s in ("text", "clip", "decoder", "encoder")
    }
    now = time.monotonic()
    queues = {s: deque() for s in cfgs}
    assert pick_stage(queues, cfgs, now) == (None, float("inf"))
    queues["encoder"].append(item(stage="encoder", enqueued=now))
    stage, wait = pick_stage(queues, cfgs, now)
    assert stage is None and wait == pytest.approx(0.05)  # waits for the batch to fill, at most the delay
    assert pick_stage(queues, cfgs, now + 0.06)[0] == "encoder"  # delay passed
    queues["clip"].extend(item(stage="clip", enqueued=now) for _ in range(4))  # full batch: ready at once
    assert pick_stage(queues, cfgs, now)[0] == "clip"


class FakeBackend(Backend):
    """Deterministic arithmetic standing in for models: results depend on each input only."""

    def __init__(self, delay: float = 0.0):
        self.info = BackendInfo("fake", "cpu")
        self.has_clip = True
        self.delay = delay
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def _log(self, stage, n):
        with self.lock:
            self.calls.append((stage, n))
        time.sleep(self.delay)

    def encode_images(self, images):
        self._log("encoder", len(images))
        return [ImageFeatures({"v": img.mean()}) for img in images]

    def decode(self, features, coords, labels, min_iou=float("-inf")):
        self._log("decoder", len(coords))
        base = np.full(len(coords), features.arrays["v"], np.float32)
        iou = np.stack([base + coords[:, 0, 0], base, base], 1)
        kept = np.nonzero(iou.max(axis=1) > min_iou)[0]
        # Each kept prompt's mask logits hold its own index: slicing must keep rows and prompts paired.
        masks = MaskLogits(
            np.broadcast_to(kept[:, None, None, None], (len(kept), 3, 2, 2)).astype(np.float32)
        )
        return DecoderOutput(iou, kept, masks, iou[kept], masks.slice(0, len(kept)), iou[kept, :1])

    def embed_images(self, pixels):
        self._log("clip", len(pixels))
        return pixels.reshape(len(pixels), -1)[:, :4] * 2

    def embed_texts(self, ids):
        self._log("text", len(ids))
        return ids[:, :4].astype(np.float32)


def configs(batch=8, delay_ms=0.0, max_queue=64):
    return {s: StageConfig(batch, delay_ms, max_queue) for s in ("text", "clip", "decoder", "encoder")}


def test_executor_returns_one_result_per_item_of_one_image():
    be = FakeBackend()
    ex = BatchExecutor(be)
    f1 = ImageFeatures({"v": 1.0})
    items = [item(stage="decoder") for _ in range(3)]
    inf = float("-inf")
    items[0].payload = (f1, np.full((2, 1, 2), 10.0, np.float32), np.ones((2, 1), np.int32), inf)
    items[1].payload = (f1, np.full((3, 1, 2), 20.0, np.float32), np.ones((3, 1), np.int32), inf)
    items[2].payload = (f1, np.full((1, 1, 2), 30.0, np.float32), np.ones((1, 1), np.int32), inf)
    outs = ex.run("decoder", items)
    assert [len(o.iou) for o in outs] == [2, 3, 1] and be.calls == [("decoder", 6)]
    assert outs[0].iou[0, 0] == 11 and outs[1].iou[0, 0] == 21 and outs[2].iou[0, 0] == 31
    assert [o.kept.tolist() for o in outs] == [[0, 1], [0, 1, 2], [0]]
    items[2].payload = (ImageFeatures({"v": 2.0}),) + items[2].payload[1:]
    with pytest.raises(RuntimeError, match="mixes images"):
        ex.run("decoder", items)


def test_executor_splits_kept_prompts_between_items():
    """min_iou keeps a subset of the batch: each item gets its own kept prompts, re-indexed, with
    the mask rows that belong to them."""
    be = FakeBackend()
    ex = BatchExecutor(be)
    f1 = ImageFeatures({"v": 0.0})
    items = [item(stage="decoder") for _ in range(2)]
    x0 = np.array([5, 1, 7], np.float32)  # the fake's best IoU is the x coordinate
    x1 = np.array([9, 2, 6, 8], np.float32)
    for it, x in zip(items, (x0, x1)):
        coords = np.stack([x, x], 1)[:, None, :]
        it.payload = (f1, coords, np.ones((len(x), 1), np.int32), 5.5)
    a, b = ex.run("decoder", items)
    assert a.kept.tolist() == [2] and b.kept.tolist() == [0, 2, 3]
    # mask rows hold the batch-wide prompt index: 2 (item a), then 3 + 0, 3 + 2, 3 + 3
    assert a.masks.numpy()[:, 0, 0, 0].tolist() == [2]
    assert b.masks.numpy()[:, 0, 0, 0].tolist() == [3, 5, 6]
    assert b.stability[:, 0].tolist() == [9, 6, 8] and len(b.iou) == 4
    items[1].payload = items[1].payload[:3] + (0.5,)
    with pytest.raises(RuntimeError, match="min_iou"):
        ex.run("decoder", items)


async def test_decoder_chunks_batch_per_image():
    be = FakeBackend(delay=0.02)
    sched = Scheduler(be, configs(batch=64))
    try:
        fa, fb = ImageFeatures({"v": 1.0}), ImageFeatures({"v": 2.0})
        blocker = asyncio.ensure_future(sched.embed_texts(np.ones((1, 77), np.int32), RequestContext()))
        await asyncio.sleep(0.005)
        jobs = [
            sched.decode(
                f, np.full((4, 1, 2), float(i), np.float32), np.ones((4, 1), np.int32), RequestContext()
            )
            for i, f in enumerate([fa, fb, fa, fb])
        ]
        outs = await asyncio.gather(*jobs)
        await blocker
        assert [o.iou[0, 0] for o in outs] == [1.0, 3.0, 3.0, 5.0]
        assert sorted(n for s, n in be.calls if s == "decoder") == [8, 8]  # two images, two batches
    finally:
        sched.close()


async def test_concurrent_requests_get_their_own_results_in_batches():
    be = FakeBackend(delay=0.02)
    metrics = Metrics()
    sched = Scheduler(be, configs(batch=16), metrics)
    try:

        async def one(i):
            ctx = RequestContext()
            x = np.full((2, 3, 4), float(i), np.float32)  # 2 crops, values identify the request
            return i, await sched.embed_images(x, ctx)

        results = await asyncio.gather(*[one(i) for i in range(12)])
        for i, emb in results:
            assert emb.shape == (2, 4) and np.all(emb == 2 * i)
        assert metrics.value("seglabel_inference_count_total", stage="clip") == 24
        assert metrics.value("seglabel_execution_count_total", stage="clip") < 12  # batches > 1 formed
    finally:
        sched.close()


async def test_batching_off_runs_one_item_per_batch():
    be = FakeBackend(delay=0.01)
    sched = Scheduler(be, configs(batch=16), batching=False)
    try:
        await asyncio.gather(
            *[sched.embed_images(np.ones((1, 3, 4), np.float32), RequestContext()) for _ in range(6)]
        )
        assert [n for s, n in be.calls if s == "clip"] == [1] * 6
    finally:
        sched.close()


async def test_full_queue_is_refused_at_once():
    be = FakeBackend(delay=0.2)
    sched = Scheduler(be, configs(batch=1, max_queue=2))
    try:
        ctx = RequestContext()
        accepted = 0
        with pytest.raises(Overloaded, match="clip queue is full"):
            for _ in range(10):  # the worker holds at most one item, the queue two
                sched.submit_nowait("clip", np.ones((1, 3, 4), np.float32), 1, ctx)
                accepted += 1
        assert 2 <= accepted <= 3
    finally:
        sched.close()


async def test_cancelled_or_expired_work_is_dropped_before_it_runs():
    be = FakeBackend(delay=0.15)
    sched = Scheduler(be, configs(batch=1))
    try:
        blocker = asyncio.ensure_future(sched.embed_images(np.ones((1, 3, 4), np.float32), RequestContext()))
        await asyncio.sleep(0.05)  # the worker is busy with the blocker
        gone, late = RequestContext(), RequestContext(deadline=time.monotonic() + 0.05)
        f1 = asyncio.ensure_future(sched.embed_images(np.ones((1, 3, 4), np.float32), gone))
        f2 = asyncio.ensure_future(sched.embed_images(np.ones((1, 3, 4), np.float32), late))
        await asyncio.sleep(0.01)
        gone.cancel()
        await blocker
        with pytest.raises(Cancelled):
            await f1
        with pytest.raises(DeadlineExceeded):
            await f2
        assert [s for s, _ in be.calls] == ["clip"]  # only the blocker ran
    finally:
        sched.close()


async def test_a_failing_batch_fails_its_items_not_the_worker():
    class Broken(FakeBackend):
        def embed_texts(self, ids):
            raise RuntimeError("boom")

    sched = Scheduler(Broken(), configs())
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await sched.embed_texts(np.ones((1, 77), np.int32), RequestContext())
        out = await sched.embed_images(np.ones((1, 3, 4), np.float32), RequestContext())
        assert out.shape == (1, 4)
    finally:
        sched.close()
