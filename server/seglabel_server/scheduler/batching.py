"""The scheduler's pure functions, unit-tested with plain queues and no models: a stage's settings,
one queued work item, which stage runs next (:func:`pick_stage`) and which items form its batch
(:func:`collate_batch`), with Triton's semantics: a stage is ready when it holds ``max_batch_size``
units or its oldest item has waited ``max_queue_delay`` (default 0: batch whatever is queued); an
interactive item makes its stage ready at once (it is never held for a batch to fill).

The order is the items' :func:`rank`: their request's class (interactive, default, batch), then its
fair-share turn (:class:`FairClock`: the requests of concurrent jobs or callers take turns, so that
two jobs of one class share the server equally whatever each keeps in flight), then the time the
request was admitted, across stages, so that the earliest turn's next stage runs first and requests
finish rather than all progress slowly. A request's class improves by one for every ``aging_s`` it
has waited since admission, so batch work waits a bounded time behind a stream of interactive work
and is never starved."""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from seglabel_server.types import RequestContext

INTERACTIVE, DEFAULT, BATCH = 0, 1, 2
CLASSES = {"interactive": INTERACTIVE, "default": DEFAULT, "batch": BATCH}


@dataclass
class StageConfig:
    max_batch_size: int
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256  # items


@dataclass
class WorkItem:
    stage: str
    payload: Any
    size: int  # batch units: images, prompts, crops, token rows
    ctx: RequestContext
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    key: Hashable = None  # items with different keys never share a batch (decoder: points per prompt)
    enqueued: float = field(default_factory=time.monotonic)


def gave_up(item: WorkItem) -> bool:
    """Its request was cancelled or passed its deadline, or its caller stopped waiting: never run."""
    return item.ctx.done() or item.future.cancelled()


def rank(item: WorkItem, now: float, aging_s: float = 0.0) -> tuple[int, int, float]:
    """(effective class, fair-share turn, admission time): the smaller runs first. The class
    improves by one per ``aging_s`` (0: never) the request has waited since it was admitted. Work
    of no admitted request (turn 0: warm-up, a vocabulary's text) goes first in its class."""
    admitted = item.ctx.admitted or item.enqueued
    cls = item.ctx.priority
    if aging_s > 0 and cls > INTERACTIVE:
        cls = max(INTERACTIVE, cls - int((now - admitted) // aging_s))
    return cls, item.ctx.turn, admitted


class FairClock:
    """Fair-share turns (start-time fair queueing with one unit per request): a request of share
    ``s`` (a job, or a caller) gets the turn ``max(V, last[s]) + 1``, where ``V`` is the earliest
    turn still in flight. A share with many requests in flight holds later and later turns, so a
    newcomer's first request comes before its second; a share that was idle starts at ``V`` (no
    credit saved up). Not thread-safe: called from the asyncio loop only."""

    def __init__(self) -> None:
        self.inflight: dict[int, int] = {}  # turn -> requests holding it
        self.last: dict[str, int] = {}  # share -> its latest turn (only while it is ahead of V)
        self.floor = 0  # V when nothing is in flight

    def now(self) -> int:
        return min(self.inflight, default=self.floor)

    def take(self, share: str) -> int:
        v = self.now()
        turn = max(v, self.last.get(share, 0)) + 1
        self.last[share] = turn
        self.inflight[turn] = self.inflight.get(turn, 0) + 1
        return turn

    def done(self, turn: int) -> None:
        left = self.inflight.get(turn, 0) - 1
        if left > 0:
            self.inflight[turn] = left
        else:
            self.inflight.pop(turn, None)
        self.floor = max(self.floor, turn)
        if len(self.last) > 2 * len(self.inflight) + 64:  # shares behind V decide nothing any more
            v = self.now()
            self.last = {s: t for s, t in self.last.items() if t > v}


class Backlog:
    """A stage's items beyond its window, first in first out per (class, share): within one the
    turns only grow, so the best item (:func:`rank`) is one of the lanes' heads and is found
    without scanning the whole backlog."""

    def __init__(self) -> None:
        self.lanes: dict[tuple[int, str], deque] = {}
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        for lane in self.lanes.values():
            yield from lane

    def append(self, item: WorkItem) -> None:
        self.lanes.setdefault((item.ctx.priority, item.ctx.share), deque()).append(item)
        self.size += 1

    def pop_best(self, now: float, aging_s: float) -> WorkItem:
        key = min(self.lanes, key=lambda k: rank(self.lanes[k][0], now, aging_s))
        lane = self.lanes[key]
        item = lane.popleft()
        if not lane:
            del self.lanes[key]
        self.size -= 1
        return item

    def drop_done(self) -> list[WorkItem]:
        """Remove and return the items whose request gave up, from anywhere in the backlog."""
        gone: list[WorkItem] = []
        for key in list(self.lanes):
            lane = self.lanes[key]
            if not any(gave_up(i) for i in lane):
                continue
            live = deque()
            for i in lane:
                (gone if gave_up(i) else live).append(i)
            if live:
                self.lanes[key] = live
            else:
                del self.lanes[key]
        self.size -= len(gone)
        return gone

    def clear(self) -> None:
        self.lanes.clear()
        self.size = 0


def collate_batch(
    pending: deque,
    max_size: int,
    batching: bool = True,
    now: float | None = None,
    aging_s: float = 0.0,
    only: int | None = None,
    skip: int | None = None,
) -> tuple[list[WorkItem], list[WorkItem]]:
    """Take the best-ranked items of ``pending`` (:func:`rank`; equal ranks in queue order) into one
    batch of at most ``max_size`` units.

    Returns (batch, dropped). Items whose request was cancelled or passed its deadline are removed
    and returned as dropped (never run). The batch takes at least one live item even if it alone is
    bigger than ``max_size``; it only takes items with the first item's key, and stops at the first
    item that does not fit; the others stay queued in their order. With ``batching`` False the batch
    is a single item. ``only``: take items of that class alone (the interactive lane); ``skip``:
    leave the items of that class (the other workers, where the lane has sessions of its own).
    """
    now = time.monotonic() if now is None else now
    dropped: list[WorkItem] = []
    live: list[WorkItem] = []
    for i in pending:
        (dropped if gave_up(i) else live).append(i)
    batch: list[WorkItem] = []
    total = 0
    candidates = [i for i in live if _takes(i, only, skip)]
    for item in sorted(candidates, key=lambda i: rank(i, now, aging_s)):  # stable: queue order on ties
        if not batch:
            batch.append(item)
            total = item.size
            if not batching:
                break
            continue
        if item.key != batch[0].key:
            continue
        if total + item.size > max_size:
            break
        batch.append(item)
        total += item.size
    taken = {id(i) for i in batch}
    pending.clear()
    pending.extend(i for i in live if id(i) not in taken)
    return batch, dropped


def _takes(item: WorkItem, only: int | None, skip: int | None) -> bool:
    cls = item.ctx.priority
    return (only is None or cls == only) and (skip is None or cls != skip)


def pick_stage(
    queues: dict[str, deque | list],
    configs: dict[str, StageConfig],
    now: float,
    aging_s: float = 0.0,
    only: int | None = None,
    skip: int | None = None,
) -> tuple[str | None, float]:
    """The ready stage whose best item ranks first (:func:`rank`; ties: the earlier stage of
    ``configs``), or (None, seconds until one becomes ready / inf). A stage is ready when it holds
    ``max_batch_size`` units, its oldest item has waited ``max_queue_delay``, or it holds an
    interactive item. ``only``: look at items of that class alone (ready at once); ``skip``: leave
    the items of that class."""
    wait = float("inf")
    best: tuple | None = None
    for order, stage in enumerate(configs):
        q = queues[stage]
        if only is not None or skip is not None:
            q = [i for i in q if _takes(i, only, skip)]
        if not q:
            continue
        cfg = configs[stage]
        top = min(rank(i, now, aging_s) for i in q)
        if only is not None:
            top = (INTERACTIVE, *top[1:])
        due = q[0].enqueued + cfg.max_queue_delay_ms / 1000.0 - now
        if top[0] == INTERACTIVE or due <= 0 or sum(i.size for i in q) >= cfg.max_batch_size:
            if best is None or (top, order) < best[:2]:
                best = (top, order, stage)
        else:
            wait = min(wait, due)
    if best is not None:
        return best[2], 0.0
    return None, wait
