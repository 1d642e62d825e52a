"""Scheduling without models: the batch collector, stage choice, and the worker with a fake backend."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest
from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.errors import Cancelled, DeadlineExceeded
from seglabel_server.metrics import Metrics
from seglabel_server.models import kinds
from seglabel_server.models.kinds.sam2 import ENCODER_OUTPUTS, DecodeRequest, ImageFeatures
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
    """Deterministic arithmetic standing in for models, run by model name like every backend: results
    depend on each input only. The stages it serves are the registered kinds."""

    def __init__(self, delay: float = 0.0):
        self.info = BackendInfo("fake", "cpu")
        self.delay = delay
        self.calls: list[tuple[str, int]] = []
        self.gates: dict[str, threading.Event] = {}  # stage -> run waits until it is set
        self.lock = threading.Lock()
        self.fns = {
            "sam2_image_encoder": self._encoder,
            "sam2_mask_decoder": self._decoder,
            "clip_image_encoder": lambda f: {
                "image_embeds": f["pixel_values"].reshape(len(f["pixel_values"]), -1)[:, :4] * 2
            },
            "clip_text_encoder": lambda f: {"text_embeds": f["input_ids"][:, :4].astype(np.float32)},
        }

    def load(self, model):
        pass

    def unload(self, model):
        pass

    def loaded(self):
        return list(self.fns)

    def run(self, model, feeds):
        stage = kinds.for_model(model).name
        with self.lock:
            self.calls.append((stage, len(next(v for k, v in feeds.items() if k not in DECODER_IMAGE))))
        time.sleep(self.delay)
        gate = self.gates.get(stage)
        if gate is not None:
            assert gate.wait(10), f"{stage} gate never opened"
        return self.fns[model](feeds)

    @staticmethod
    def _encoder(f):
        v = f["images"].reshape(len(f["images"]), -1).mean(axis=1)
        return {name: v[:, None] for name in ENCODER_OUTPUTS}

    @staticmethod
    def _decoder(f):
        coords = f["point_coords"]
        image = f.get("image_index", np.zeros(len(coords), np.int64))  # multi-image batches
        base = f["image_embed"][image, 0].astype(np.float32)
        iou = np.stack([base + coords[:, 0, 0], base, base], 1)
        kept = np.nonzero(iou.max(axis=1) > f["min_iou"][0])[0]
        # Each kept prompt's mask logits hold its own index: slicing must keep rows and prompts paired.
        masks = np.broadcast_to(kept[:, None, None, None], (len(kept), 3, 2, 2)).astype(np.float32)
        return {
            "iou_predictions": iou,
            "kept": kept,
            "masks": masks,
            "stability_scores": iou[kept],
            "single_mask": masks[:, :1],
            "single_iou": iou[kept, :1],
        }


DECODER_IMAGE = ("image_embed", "high_res_feats_0", "high_res_feats_1", "min_iou")


def features(v: float) -> ImageFeatures:
    return ImageFeatures({name: np.full((1, 1), v, np.float32) for name in ENCODER_OUTPUTS})


def prompts(x, min_iou=float("-inf"), f=None, multi_image=False) -> DecodeRequest:
    x = np.asarray(x, np.float32)
    coords = np.stack([x, x], 1)[:, None, :]
    return DecodeRequest(f or features(0.0), coords, np.ones((len(x), 1), np.int32), min_iou, multi_image)


def configs(batch=8, delay_ms=0.0, max_queue=64):
    return {k.name: StageConfig(batch, delay_ms, max_queue) for k in kinds.all_kinds()}


def test_executor_returns_one_result_per_item_of_one_image():
    be = FakeBackend()
    ex = BatchExecutor(be)
    f1 = features(1.0)
    items = [item(stage="decoder") for _ in range(3)]
    for it, (n, v) in zip(items, ((2, 10.0), (3, 20.0), (1, 30.0))):
        it.payload = prompts([v] * n, f=f1)
    outs = ex.run("decoder", items)
    assert [len(o.iou) for o in outs] == [2, 3, 1] and be.calls == [("decoder", 6)]
    assert outs[0].iou[0, 0] == 11 and outs[1].iou[0, 0] == 21 and outs[2].iou[0, 0] == 31
    assert [o.kept.tolist() for o in outs] == [[0, 1], [0, 1, 2], [0]]
    items[2].payload = prompts([30.0], f=features(2.0))
    with pytest.raises(RuntimeError, match="mixes images"):
        ex.run("decoder", items)


def test_executor_splits_kept_prompts_between_items():
    """min_iou keeps a subset of the batch: each item gets its own kept prompts, re-indexed, with
    the mask rows that belong to them."""
    be = FakeBackend()
    ex = BatchExecutor(be)
    f1 = features(0.0)
    items = [item(stage="decoder") for _ in range(2)]
    # the fake's best IoU is the x coordinate
    items[0].payload = prompts([5, 1, 7], 5.5, f1)
    items[1].payload = prompts([9, 2, 6, 8], 5.5, f1)
    a, b = ex.run("decoder", items)
    assert a.kept.tolist() == [2] and b.kept.tolist() == [0, 2, 3]
    # mask rows hold the batch-wide prompt index: 2 (item a), then 3 + 0, 3 + 2, 3 + 3
    assert a.masks.numpy()[:, 0, 0, 0].tolist() == [2]
    assert b.masks.numpy()[:, 0, 0, 0].tolist() == [3, 5, 6]
    assert b.stability[:, 0].tolist() == [9, 6, 8] and len(b.iou) == 4
    items[1].payload = prompts([9, 2, 6, 8], 0.5, f1)
    with pytest.raises(RuntimeError, match="min_iou"):
        ex.run("decoder", items)


def test_executor_checks_one_result_per_item():
    class Short(kinds.ModelKind):
        def split(self, outputs, payloads, to_host):
            return [to_host(outputs["image_embeds"])]  # one result for the whole batch

    short = Short("clip", "clip_image_encoder", "clip", ("pixel_values",), ("image_embeds",))
    with pytest.raises(RuntimeError, match="1 results for 2 items"):
        short.execute(FakeBackend(), [np.ones((1, 3, 4), np.float32)] * 2)


async def test_decoder_chunks_batch_per_image():
    be = FakeBackend(delay=0.02)
    sched = Scheduler(be, configs(batch=64))
    try:
        fa, fb = features(1.0), features(2.0)
        blocker = asyncio.ensure_future(sched.run("text", np.ones((1, 77), np.int32), RequestContext()))
        await asyncio.sleep(0.005)
        jobs = [
            sched.run("decoder", prompts([float(i)] * 4, f=f), RequestContext())
            for i, f in enumerate([fa, fb, fa, fb])
        ]
        outs = await asyncio.gather(*jobs)
        await blocker
        assert [o.iou[0, 0] for o in outs] == [1.0, 3.0, 3.0, 5.0]
        assert sorted(n for s, n in be.calls if s == "decoder") == [8, 8]  # two images, two batches
    finally:
        sched.close()


async def test_multi_image_decoder_batches_mix_images():
    """A backend whose decoder takes several images (multi_image) gets one batch for prompts of
    different images, and each request still gets its own image's results."""
    be = FakeBackend(delay=0.02)
    sched = Scheduler(be, configs(batch=64))
    try:
        fa, fb = features(1.0), features(2.0)
        blocker = asyncio.ensure_future(sched.run("text", np.ones((1, 77), np.int32), RequestContext()))
        await asyncio.sleep(0.005)
        jobs = [
            sched.run("decoder", prompts([float(i)] * 4, f=f, multi_image=True), RequestContext())
            for i, f in enumerate([fa, fb, fa, fb])
        ]
        outs = await asyncio.gather(*jobs)
        await blocker
        assert [o.iou[0, 0] for o in outs] == [1.0, 3.0, 3.0, 5.0]
        assert [o.iou[0, 1] for o in outs] == [1.0, 2.0, 1.0, 2.0]  # each prompt's own image
        assert [n for s, n in be.calls if s == "decoder"] == [16]  # one batch for both images
    finally:
        sched.close()


async def test_stage_workers_run_the_encoder_while_the_decoder_is_busy():
    """Two workers (encoder | the rest): an encoder batch completes while a decoder batch is still
    running; with one worker it would wait behind it."""
    be = FakeBackend()
    gate = be.gates["decoder"] = threading.Event()
    stages = configs(batch=8)
    groups = [["encoder"], [s for s in stages if s != "encoder"]]
    sched = Scheduler(be, stages, workers=groups)
    try:
        assert [t.name for t in sched.threads][0] == "seglabel-inference-encoder" and len(sched.threads) == 2
        decoding = asyncio.ensure_future(sched.run("decoder", prompts([1.0]), RequestContext()))
        await asyncio.sleep(0.05)
        assert not decoding.done()
        feats = await asyncio.wait_for(
            sched.run("encoder", np.ones((3, 4, 4), np.float32), RequestContext()), timeout=5
        )
        assert not decoding.done() and float(feats.arrays["image_embed"][0, 0]) == 1.0
        gate.set()
        out = await asyncio.wait_for(decoding, timeout=5)
        assert out.iou[0, 0] == 1.0
    finally:
        gate.set()
        sched.close()


def test_stage_worker_groups_from_the_config():
    from seglabel_server.service.config import ServerConfig

    stages = ["text", "clip", "decoder", "encoder"]
    assert ServerConfig().worker_groups(stages) == [stages]  # auto on the CPU: one worker
    gpu = ServerConfig(backend="torch", device="cuda")
    assert gpu.worker_groups(stages) == [["encoder"], ["text", "clip", "decoder"]]
    assert ServerConfig(device="cuda").worker_groups(stages) == [stages]  # onnxruntime: one
    graphs = ServerConfig(backend="torch", device="cuda", torch_compile="reduce-overhead")
    assert graphs.worker_groups(stages) == [stages]
    cfg = ServerConfig(stage_workers="encoder|decoder|clip")
    assert cfg.worker_groups(stages) == [["encoder"], ["decoder"], ["clip", "text"]]
    with pytest.raises(ValueError, match="no stage"):
        ServerConfig(stage_workers="encoder|bogus").worker_groups(stages)
    with pytest.raises(ValueError, match="without a worker"):
        Scheduler(FakeBackend(), configs(), workers=[["encoder"]])


async def test_concurrent_requests_get_their_own_results_in_batches():
    be = FakeBackend(delay=0.02)
    metrics = Metrics()
    sched = Scheduler(be, configs(batch=16), metrics)
    try:

        async def one(i):
            ctx = RequestContext()
            x = np.full((2, 3, 4), float(i), np.float32)  # 2 crops, values identify the request
            return i, await sched.run("clip", x, ctx)

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
            *[sched.run("clip", np.ones((1, 3, 4), np.float32), RequestContext()) for _ in range(6)]
        )
        assert [n for s, n in be.calls if s == "clip"] == [1] * 6
    finally:
        sched.close()


async def test_work_beyond_the_window_waits_in_order_and_all_of_it_runs():
    """Admitted work is never refused for room: 20 items on a window of 2 all run, in the order
    they were queued, and the window never holds more than 2."""
    be = FakeBackend(delay=0.01)
    metrics = Metrics()
    sched = Scheduler(be, configs(batch=1, max_queue=2), metrics=metrics)
    seen = []
    original = sched.executor.run

    def run(stage, items):
        seen.append(len(sched.queues["clip"]))
        return original(stage, items)

    sched.executor.run = run
    try:
        ctx = RequestContext()
        futs = [sched.submit("clip", np.full((1, 3, 4), i, np.float32), ctx) for i in range(20)]
        assert len(sched.queues["clip"]) <= 2 and len(sched.backlog["clip"]) >= 17
        outs = await asyncio.gather(*[asyncio.wrap_future(f) for f in futs])
        assert [float(np.ravel(o)[0]) for o in outs] == [2.0 * i for i in range(20)]  # fake: 2 x input
        assert max(seen) <= 2 and not sched.backlog["clip"]
        assert metrics.backlog_depth.labels("clip")._value.get() == 0
    finally:
        sched.close()


async def test_backlog_items_of_a_request_that_gave_up_are_dropped():
    """Cancelled work waiting in the backlog never runs and fails with Cancelled; the other
    request's items all run."""
    be = FakeBackend(delay=0.05)
    sched = Scheduler(be, configs(batch=1, max_queue=1))
    try:
        keep, gone = RequestContext(), RequestContext()
        mine = [sched.submit("clip", np.ones((1, 3, 4), np.float32), keep) for _ in range(3)]
        theirs = [sched.submit("clip", np.ones((1, 3, 4), np.float32), gone) for _ in range(5)]
        gone.cancel()
        await asyncio.gather(*[asyncio.wrap_future(f) for f in mine])
        for f in theirs:
            with pytest.raises(Cancelled):
                await asyncio.wrap_future(f)
        assert len(be.calls) <= 4  # mine, and at most the one of theirs already in the window
    finally:
        sched.close()


async def test_cancelled_or_expired_work_is_dropped_before_it_runs():
    be = FakeBackend(delay=0.15)
    sched = Scheduler(be, configs(batch=1))
    try:
        blocker = asyncio.ensure_future(sched.run("clip", np.ones((1, 3, 4), np.float32), RequestContext()))
        await asyncio.sleep(0.05)  # the worker is busy with the blocker
        gone, late = RequestContext(), RequestContext(deadline=time.monotonic() + 0.05)
        f1 = asyncio.ensure_future(sched.run("clip", np.ones((1, 3, 4), np.float32), gone))
        f2 = asyncio.ensure_future(sched.run("clip", np.ones((1, 3, 4), np.float32), late))
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
        def run(self, model, feeds):
            if model == "clip_text_encoder":
                raise RuntimeError("boom")
            return super().run(model, feeds)

    sched = Scheduler(Broken(), configs())
    try:
        with pytest.raises(RuntimeError, match="boom"):
            await sched.run("text", np.ones((1, 77), np.int32), RequestContext())
        out = await sched.run("clip", np.ones((1, 3, 4), np.float32), RequestContext())
        assert out.shape == (1, 4)
    finally:
        sched.close()


def test_close_fails_queued_items_even_when_a_request_cancelled_its_own():
    """close() answers every queued item "server stopped"; one already cancelled by its request
    (e.g. after another of its items was refused) is skipped instead of raising InvalidStateError
    and leaving the rest unanswered."""
    from seglabel_server.errors import Cancelled

    sched = Scheduler(FakeBackend(delay=0.5), configs(batch=64))
    busy = sched.submit("text", np.ones((1, 77), np.int32), RequestContext())
    time.sleep(0.1)  # the worker is inside the first batch; the next two stay queued
    gave_up = sched.submit("text", np.ones((1, 77), np.int32), RequestContext())
    waiting = sched.submit("text", np.ones((1, 77), np.int32), RequestContext())
    assert gave_up.cancel()
    sched.close()
    assert busy.result(timeout=0).shape[0] == 1
    with pytest.raises(Cancelled, match="server stopped"):
        waiting.result(timeout=0)
