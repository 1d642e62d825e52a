"""The scheduler's pure functions, unit-tested with plain queues and no models: a stage's settings,
one queued work item, which stage runs next (:func:`pick_stage`) and which items form its batch
(:func:`collate_batch`), with Triton's semantics: a stage is ready when it holds ``max_batch_size``
units or its oldest item has waited ``max_queue_delay`` (default 0: batch whatever is queued)."""

from __future__ import annotations

import concurrent.futures
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from seglabel_server.types import RequestContext


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


def collate_batch(
    pending: deque, max_size: int, batching: bool = True
) -> tuple[list[WorkItem], list[WorkItem]]:
    """Take items from the front of ``pending`` into one batch of at most ``max_size`` units.

    Returns (batch, dropped). Items whose request was cancelled or passed its deadline are removed
    and returned as dropped (never run). The batch takes at least one live item even if it alone is
    bigger than ``max_size``; it only takes items with the first item's key, leaving the others queued
    in order. With ``batching`` False the batch is a single item.
    """
    batch: list[WorkItem] = []
    dropped: list[WorkItem] = []
    kept: deque = deque()
    total = 0
    while pending:
        item = pending.popleft()
        if item.ctx.done() or item.future.cancelled():
            dropped.append(item)
            continue
        if not batch:
            batch.append(item)
            total = item.size
            if not batching:
                break
            continue
        if item.key != batch[0].key:
            kept.append(item)
            continue
        if total + item.size > max_size:
            kept.append(item)
            break
        batch.append(item)
        total += item.size
    kept.extend(pending)
    pending.clear()
    pending.extend(kept)
    return batch, dropped


def pick_stage(
    queues: dict[str, deque], configs: dict[str, StageConfig], now: float
) -> tuple[str | None, float]:
    """The highest-priority ready stage (``configs`` is in priority order), or (None, seconds until
    one becomes ready / inf)."""
    wait = float("inf")
    for stage in configs:
        q = queues[stage]
        if not q:
            continue
        cfg = configs[stage]
        if sum(i.size for i in q) >= cfg.max_batch_size:
            return stage, 0.0
        due = q[0].enqueued + cfg.max_queue_delay_ms / 1000.0 - now
        if due <= 0:
            return stage, 0.0
        wait = min(wait, due)
    return None, wait
