"""When work runs and in which batch.

Every model call of every request becomes a :class:`WorkItem` in a per-stage queue, one
stage per registered model kind (:mod:`seglabel_server.models.kinds`; e.g. encoder: images; decoder:
prompt chunks of one image, from one or several requests; clip: crops; text: token rows).
An inference worker thread (one per group of stages: by default one; on a GPU the encoder has its own,
so the next batch's encoder overlaps the decoder and CLIP of this one) repeatedly asks
:func:`pick_stage` which of its stages is ready,
drains it with :func:`collate_batch` (pure functions, unit-tested without models), and hands the
batch to :class:`BatchExecutor`, which has the stage's kind collate it, run it on the backend by
model name and split the outputs into exactly one result per item.
The asyncio loop only awaits futures: it never blocks on model work.

Triton's semantics: a stage is ready when it holds ``max_batch_size`` units or its oldest item has
waited ``max_queue_delay`` (default 0: batch whatever is queued, never wait).

Work is never refused here: a request was admitted at the door (the service's in-flight limit and
memory budget), and what it queues is bounded by its own parameters. A stage's queue is the window
batches are formed from (``max_queue`` items, so that forming a batch stays cheap); items beyond it
wait in a backlog, in arrival order, and move into the window as batches leave it. A waiting item
still honours its request's cancellation and deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from seglabel_server.backends.base import Backend
from seglabel_server.errors import Cancelled, DeadlineExceeded, Overloaded
from seglabel_server.metrics import Metrics
from seglabel_server.models import kinds
from seglabel_server.niceness import lower_this_thread
from seglabel_server.scheduler.batching import (
    CLASSES,
    INTERACTIVE,
    Backlog,
    StageConfig,
    WorkItem,
    collate_batch,
    gave_up,
    pick_stage,
)
from seglabel_server.types import RequestContext

log = logging.getLogger(__name__)
CLASS_NAMES = {v: k for k, v in CLASSES.items()}


class BatchExecutor:
    """Runs one batch of one stage on a backend through the stage's kind; exactly one result per item."""

    def __init__(self, backend: Backend):
        self.backend = backend

    def run(self, stage: str, items: Sequence[WorkItem]) -> list[Any]:
        return kinds.get(stage).execute(self.backend, [i.payload for i in items])


class Scheduler:
    """Bounded per-stage queues + inference worker threads; ``await run(stage, payload, ctx)`` for
    the pipeline. ``configs`` names the stages, in priority order; ``workers`` groups them, one
    thread per group (default: one thread for all)."""

    def __init__(
        self,
        backend: Backend,
        configs: dict[str, StageConfig],
        metrics: Metrics | None = None,
        batching: bool = True,
        workers: list[list[str]] | None = None,
        aging_s: float = 0.0,
        interactive_lane: bool = False,
        lane_backend: Backend | None = None,
        worker_nice: int = 0,
    ):
        self.executor = BatchExecutor(backend)
        # the interactive lane's own sessions (at the server's priority, batch work's lowered by
        # worker_nice): the other workers leave interactive items to it
        self.lane_executor = BatchExecutor(lane_backend) if lane_backend is not None else self.executor
        skip = INTERACTIVE if interactive_lane and lane_backend is not None else None
        self.aging_s = aging_s  # a request's class improves by one per aging_s waited (0: never)
        self.configs = configs
        self.metrics = metrics
        self.batching = batching
        self.queues: dict[str, deque] = {s: deque() for s in configs}
        self.backlog: dict[str, Backlog] = {s: Backlog() for s in configs}
        self.cond = threading.Condition()
        self.stopping = False
        groups = workers or [list(configs)]
        missing = set(configs) - {s for g in groups for s in g}
        if missing:
            raise ValueError(f"stages without a worker: {sorted(missing)}")
        if metrics:
            for stage in configs:
                for cls, name in CLASS_NAMES.items():
                    metrics.class_queue_depth.labels(stage, name).set_function(
                        lambda s=stage, c=cls: self.waiting(s, c)[0])  # fmt: skip
                    metrics.class_oldest_wait.labels(stage, name).set_function(
                        lambda s=stage, c=cls: self.waiting(s, c)[1])  # fmt: skip
        self.threads = []
        for group in groups:
            own = {s: c for s, c in configs.items() if s in group}  # keeps the priority order
            name = "seglabel-inference" + (f"-{'-'.join(own)}" if len(groups) > 1 else "")
            t = threading.Thread(
                target=self._loop, args=(own, None, skip, worker_nice), name=name, daemon=True
            )
            t.start()
            self.threads.append(t)
        if interactive_lane:
            # Model runs are not preempted: a click behind a job's encoder batch would wait for it.
            # This thread runs interactive items alone, beside whatever batch the others run.
            t = threading.Thread(target=self._loop, args=(dict(configs), INTERACTIVE),
                                 name="seglabel-inference-interactive", daemon=True)  # fmt: skip
            t.start()
            self.threads.append(t)

    # -- client side (asyncio loop) -----------------------------------------------------------------
    def submit(self, stage: str, payload: Any, ctx: RequestContext) -> concurrent.futures.Future:
        """Queue ``payload`` now; its result (or error) arrives on the returned future. Never
        refused for lack of room (the item waits in the stage's backlog); only a stopping server or
        an unknown stage refuses."""
        ctx.check()
        kind = kinds.get(stage)
        item = WorkItem(stage, payload, kind.size(payload), ctx, key=kind.key(payload))
        with self.cond:
            if self.stopping:
                raise Overloaded("server is shutting down")
            q = self.queues.get(stage)
            if q is None:
                raise Overloaded(f"{stage}: no such stage on this server (model not loaded)")
            backlog = self.backlog[stage]
            # an interactive item never waits behind the backlog: it joins the window at once (their
            # number is bounded by the interactive requests admitted)
            if ctx.priority > INTERACTIVE and (backlog or len(q) >= self.configs[stage].max_queue):
                backlog.append(item)
                if self.metrics:
                    self.metrics.backlog_depth.labels(stage).set(len(backlog))
            else:
                q.append(item)
            if self.metrics:
                self.metrics.queue_depth.labels(stage).set(len(q))
            self.cond.notify_all()  # the workers wait on different stages
        return item.future

    async def run(self, stage: str, payload: Any, ctx: RequestContext) -> Any:
        """Queue ``payload`` on ``stage`` and wait for its result (batched with other items)."""
        return await self.wait(self.submit(stage, payload, ctx))

    @staticmethod
    async def wait(fut: concurrent.futures.Future) -> Any:
        """The result of a :meth:`submit`; a caller that stops waiting cancels the item."""
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()
            raise

    def waiting(self, stage: str, cls: int) -> tuple[int, float]:
        """(items of class ``cls`` waiting in ``stage``, seconds the oldest of them has waited)."""
        now = time.monotonic()
        with self.cond:
            items = [i for q in (self.queues[stage], self.backlog[stage]) for i in q if i.ctx.priority == cls]
            return len(items), max((now - i.enqueued for i in items), default=0.0)

    def queue_info(self) -> list[dict]:
        """Per stage and class with items waiting: depth and the oldest one's wait (ms)."""
        out = []
        for stage in self.configs:
            for cls, name in CLASS_NAMES.items():
                depth, oldest = self.waiting(stage, cls)
                if depth:
                    out.append(
                        {"stage": stage, "priority": name, "depth": depth, "oldest_wait_ms": oldest * 1000}
                    )
        return out

    def max_batch(self, stage: str) -> int:
        return self.configs[stage].max_batch_size

    def close(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        for t in self.threads:
            t.join(timeout=30)
        for q in (*self.queues.values(), *self.backlog.values()):
            for item in q:  # (a request that gave up has cancelled its own already)
                self._fail(item, Cancelled("server stopped"))
            q.clear()

    # -- worker side --------------------------------------------------------------------------------
    def _loop(
        self, configs: dict[str, StageConfig], only: int | None = None, skip: int | None = None, nice: int = 0
    ) -> None:
        lower_this_thread(nice)
        executor = self.lane_executor if only == INTERACTIVE else self.executor
        while True:
            with self.cond:
                while True:
                    if self.stopping:
                        return
                    dropped = self._refill(configs)
                    stage, wait = pick_stage(self.queues, configs, time.monotonic(), self.aging_s, only, skip)
                    if stage is not None or dropped:
                        break
                    self.cond.wait(timeout=None if wait == float("inf") else wait)
                batch: list[WorkItem] = []
                if stage is not None:
                    batch, gone = collate_batch(
                        self.queues[stage], self.configs[stage].max_batch_size, self.batching,
                        time.monotonic(), self.aging_s, only, skip,
                    )  # fmt: skip
                    dropped += gone
                    self._refill({stage: configs[stage]}, dropped)  # room left by this batch
                    if self.metrics:
                        self.metrics.queue_depth.labels(stage).set(len(self.queues[stage]))
            for item in dropped:
                self._fail(
                    item,
                    Cancelled("request cancelled before it ran")
                    if item.ctx.cancelled
                    else DeadlineExceeded("request passed its deadline before it ran"),
                )
            if batch:
                self._execute(stage, batch, executor)

    def _refill(self, configs: dict[str, StageConfig], dropped: list | None = None) -> list[WorkItem]:
        """Move backlog items into their stage's window while it has room (under ``cond``).
        Returns ``dropped`` (a new list by default) with the backlog items whose request gave up
        meanwhile appended, to be failed outside the lock."""
        dropped = [] if dropped is None else dropped
        for stage, cfg in configs.items():
            backlog, q = self.backlog[stage], self.queues[stage]
            if not backlog:
                continue
            now = time.monotonic()
            while backlog and len(q) < cfg.max_queue:
                item = backlog.pop_best(now, self.aging_s)
                if gave_up(item):
                    dropped.append(item)
                else:
                    q.append(item)
            # Requests that gave up are dropped from anywhere in the backlog, not only its front,
            # so that a long backlog does not keep their payloads.
            if backlog:
                dropped += backlog.drop_done()
            if self.metrics:
                self.metrics.backlog_depth.labels(stage).set(len(backlog))
        return dropped

    def _fail(self, item: WorkItem, exc: BaseException) -> None:
        if self.metrics:
            self.metrics.dropped.labels(item.stage).inc()
        if not item.future.cancelled():
            try:
                item.future.set_exception(exc)
            except concurrent.futures.InvalidStateError:
                pass

    def _execute(self, stage: str, batch: list[WorkItem], executor: BatchExecutor) -> None:
        start = time.monotonic()
        for item in batch:
            # A request's queue time excludes waiting behind its own earlier batches.
            item.ctx.queue_ms += max(0.0, start - max(item.enqueued, item.ctx.busy_until)) * 1000.0
            if self.metrics:
                self.metrics.queue_seconds.labels(stage).observe(start - item.enqueued)
                self.metrics.class_queue_seconds.labels(stage, CLASS_NAMES[item.ctx.priority]).observe(
                    start - item.enqueued
                )
        try:
            results = executor.run(stage, batch)
        except BaseException as exc:  # one bad batch fails its own items, never the worker
            log.exception("%s batch of %d failed", stage, len(batch))
            for item in batch:
                self._fail(item, exc)
            return
        end = time.monotonic()
        elapsed = end - start
        for item in batch:
            item.ctx.busy_until = end
        if self.metrics:
            self.metrics.compute_seconds.labels(stage).observe(elapsed)
            self.metrics.executions.labels(stage).inc()
            self.metrics.inferences.labels(stage).inc(sum(i.size for i in batch))
            self.metrics.requests_per_batch.labels(stage).observe(len(batch))
            self.metrics.batch_size.labels(stage).observe(sum(i.size for i in batch))
        for item, result in zip(batch, results):
            if not item.future.cancelled():
                try:
                    item.future.set_result(result)
                except concurrent.futures.InvalidStateError:
                    pass
