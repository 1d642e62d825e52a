"""Interactive and batch work on one scheduler: the order by class, then admission time, across
stages; aging that bounds a batch request's wait; interactive items never held in the backlog;
admission that keeps places for the better classes. Pure functions and a fake backend, no models."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

import numpy as np
import pytest
from seglabel_server.errors import Overloaded
from seglabel_server.metrics import Metrics
from seglabel_server.scheduler.batching import (
    BATCH,
    DEFAULT,
    INTERACTIVE,
    Backlog,
    FairClock,
    StageConfig,
    collate_batch,
    pick_stage,
    rank,
)
from seglabel_server.scheduler.scheduler import Scheduler
from seglabel_server.service.admission import Admission
from seglabel_server.service.budget import MemoryBudget
from seglabel_server.types import RequestContext

from tests.unit.test_scheduler import FakeBackend, configs, item


def ctx(priority: int, admitted: float) -> RequestContext:
    return RequestContext(priority=priority, admitted=admitted)


def test_rank_is_class_then_admission_and_aging_promotes_waiting_work():
    now = 1000.0
    batch_old, default_new = item(ctx=ctx(BATCH, now - 5)), item(ctx=ctx(DEFAULT, now - 1))
    click = item(ctx=ctx(INTERACTIVE, now))
    assert sorted([batch_old, default_new, click], key=lambda i: rank(i, now)) == [
        click,
        default_new,
        batch_old,
    ]
    # waited 25 s with aging every 10 s: batch -> interactive class, and the oldest admitted of it
    assert rank(item(ctx=ctx(BATCH, now - 25)), now, aging_s=10) == (INTERACTIVE, 0, now - 25)
    assert rank(item(ctx=ctx(BATCH, now - 15)), now, aging_s=10) == (DEFAULT, 0, now - 15)
    assert rank(item(ctx=ctx(BATCH, now - 25)), now, aging_s=0) == (BATCH, 0, now - 25)  # 0: no aging
    # within a class the fair-share turn comes before the admission time
    early_turn_late = item(ctx=RequestContext(priority=BATCH, admitted=now, turn=2))
    late_turn_early = item(ctx=RequestContext(priority=BATCH, admitted=now - 9, turn=5))
    assert min([late_turn_early, early_turn_late], key=lambda i: rank(i, now)) is early_turn_late


def test_collate_takes_the_best_ranked_first_and_mixes_classes_in_a_batch():
    now = 50.0
    q = deque([item(ctx=ctx(BATCH, 1.0)), item(ctx=ctx(BATCH, 2.0)), item(ctx=ctx(INTERACTIVE, 40.0)),
               item(ctx=ctx(DEFAULT, 30.0))])  # fmt: skip
    batch, _ = collate_batch(q, max_size=2, now=now)
    assert [i.ctx.priority for i in batch] == [INTERACTIVE, DEFAULT]  # a batch may mix classes
    assert [i.ctx.admitted for i in q] == [1.0, 2.0]  # the rest keep their queue order
    batch, _ = collate_batch(q, max_size=8, now=now)
    assert [i.ctx.admitted for i in batch] == [1.0, 2.0]


def test_pick_stage_runs_the_oldest_admitted_requests_next_stage_and_never_holds_a_click():
    cfgs = {
        s: StageConfig(max_batch_size=4, max_queue_delay_ms=50)
        for s in ("text", "clip", "decoder", "encoder")
    }
    now = 100.0
    queues = {s: deque() for s in cfgs}
    queues["encoder"].append(item(stage="encoder", ctx=ctx(DEFAULT, now - 1), enqueued=now - 1))
    queues["clip"].append(item(stage="clip", ctx=ctx(DEFAULT, now - 9), enqueued=now - 1))
    # both ready (delay passed): the clip of the request admitted 9 s ago goes before a newer encoder
    assert pick_stage(queues, cfgs, now)[0] == "clip"
    queues = {s: deque() for s in cfgs}
    queues["decoder"].append(item(stage="decoder", ctx=ctx(INTERACTIVE, now), enqueued=now))
    queues["encoder"].extend(
        item(stage="encoder", ctx=ctx(BATCH, now - 30), enqueued=now - 30) for _ in range(4)
    )
    # the click's stage is ready at once (no batch delay) and goes first; with aging, the batch work
    # admitted 30 s ago has become interactive too and, older, goes first
    assert pick_stage(queues, cfgs, now) == ("decoder", 0.0)
    assert pick_stage(queues, cfgs, now, aging_s=10)[0] == "encoder"


async def test_a_click_overtakes_queued_batch_work_even_past_the_window():
    """A full window and a backlog of batch items: a click's item runs in the next batch, and the
    batch items still run in admission order afterwards (none dropped)."""
    be = FakeBackend()
    gate = be.gates["text"] = threading.Event()
    sched = Scheduler(be, configs(batch=1, max_queue=2))
    try:
        tokens = np.ones((1, 77), np.int32)
        jobs = [
            asyncio.ensure_future(sched.run("text", tokens * i, ctx(BATCH, float(i)))) for i in range(1, 6)
        ]
        await asyncio.sleep(
            0.05
        )  # the first batch runs (held by the gate), two in the window, two in the backlog
        assert len(sched.backlog["text"]) == 2
        click = asyncio.ensure_future(sched.run("text", tokens * 9, ctx(INTERACTIVE, 99.0)))
        await asyncio.sleep(0.05)
        assert len(sched.queues["text"]) == 3  # the click joined the full window
        order = []
        for j, name in [*((j, f"batch{i}") for i, j in enumerate(jobs, 1)), (click, "click")]:
            j.add_done_callback(lambda _, name=name: order.append(name))
        gate.set()
        await asyncio.wait_for(asyncio.gather(click, *jobs), 10)
        assert order == ["batch1", "click", "batch2", "batch3", "batch4", "batch5"]
    finally:
        gate.set()
        sched.close()


async def test_aging_bounds_a_batch_requests_wait_behind_a_stream_of_clicks():
    be = FakeBackend(delay=0.01)
    sched = Scheduler(be, configs(batch=1), aging_s=0.2)
    try:
        tokens = np.ones((1, 77), np.int32)
        stop = time.monotonic() + 1.5
        waiting = asyncio.ensure_future(sched.run("text", tokens, ctx(BATCH, time.monotonic())))
        t0 = time.monotonic()

        async def clicks():  # always a click queued: without aging the batch item would never run
            while time.monotonic() < stop:
                await sched.run("text", tokens, ctx(INTERACTIVE, time.monotonic()))

        streams = [asyncio.ensure_future(clicks()) for _ in range(3)]
        await asyncio.wait_for(waiting, 5)
        waited = time.monotonic() - t0
        await asyncio.gather(*streams)
        assert waited < 1.0  # two aging steps (0.4 s) and the clicks admitted before it
    finally:
        sched.close()


async def test_admission_keeps_places_for_the_better_classes():
    adm = Admission(8, MemoryBudget(1 << 40), Metrics(), reserve=0.25)
    assert [adm.limit(c) for c in (INTERACTIVE, DEFAULT, BATCH)] == [8, 6, 4]
    held = []
    for _ in range(4):
        cm = adm.admit(BATCH)
        await cm.__aenter__()
        held.append(cm)
    with pytest.raises(Overloaded, match="limit 4 for this request's class"):
        async with adm.admit(BATCH):
            pass
    for _ in range(2):
        cm = adm.admit(DEFAULT)
        await cm.__aenter__()
        held.append(cm)
    with pytest.raises(Overloaded):
        async with adm.admit(DEFAULT):
            pass
    async with adm.admit(INTERACTIVE):  # a click still comes in
        assert adm.inflight == 7
    for cm in held:
        await cm.__aexit__(None, None, None)
    assert adm.inflight == 0


def test_fair_clock_interleaves_a_newcomer_with_a_job_that_holds_many_turns():
    clock = FairClock()
    a = [clock.take("a") for _ in range(8)]  # job a fills its window first
    assert a == list(range(1, 9))
    b = [clock.take("b") for _ in range(8)]  # job b starts just after: its first turn is a's second
    assert b == list(range(2, 10))
    clock.done(a[0])
    assert clock.take("a") == 9  # a's next request goes with b's last, not before b's window
    for t in [*a[1:], *b]:
        clock.done(t)
    assert clock.now() == 9  # a's turn 9 is still in flight
    # a share at or behind the clock saves up no credit: b, a and a newcomer all get the next turn
    assert clock.take("b") == clock.take("a") == clock.take("new") == 10


def test_fair_clock_forgets_shares_that_fell_behind():
    clock = FairClock()
    for k in range(500):  # many one-off callers (connections)
        clock.done(clock.take(f"peer{k}"))
    assert len(clock.last) <= 65 and not clock.inflight


def test_backlog_gives_the_best_head_and_drops_what_gave_up():
    backlog = Backlog()
    now = 100.0

    def make(share, turn, cls=BATCH):
        return item(ctx=RequestContext(priority=cls, admitted=now - turn, turn=turn, share=share))

    a = [make("a", t) for t in (1, 2, 3, 4)]
    b = [make("b", t) for t in (2, 3)]
    for i in (*a, *b):
        backlog.append(i)
    gone = make("b", 5)
    backlog.append(gone)
    gone.ctx.cancel()
    click = make("c", 9, INTERACTIVE)
    backlog.append(click)
    assert backlog.drop_done() == [gone] and len(backlog) == 7
    order = [backlog.pop_best(now, 0.0) for _ in range(7)]
    assert order[0] is click
    assert [i.ctx.turn for i in order[1:]] == [1, 2, 2, 3, 3, 4]
    assert {id(i) for i in order[1:]} == {id(i) for i in (*a, *b)} and len(backlog) == 0


async def test_two_jobs_of_one_class_share_the_scheduler_equally():
    """Job a's whole window is admitted before job b's first request: with turns they alternate,
    and b's requests do not wait for a's window to drain."""
    be = FakeBackend(delay=0.005)
    adm = Admission(64, MemoryBudget(1 << 40), Metrics())
    sched = Scheduler(be, configs(batch=1, max_queue=4))
    done: list[str] = []
    try:
        tokens = np.ones((1, 77), np.int32)

        async def request(share: str):
            c = RequestContext()
            async with adm.admit(BATCH, share, c):
                await sched.run("text", tokens, c)
            done.append(share)

        async def job(share: str, n: int, window: int):
            sem = asyncio.Semaphore(window)

            async def one():
                async with sem:
                    await request(share)

            await asyncio.gather(*(one() for _ in range(n)))

        ja = asyncio.ensure_future(job("a", 24, 8))
        await asyncio.sleep(0)  # a's window goes in first
        jb = asyncio.ensure_future(job("b", 24, 8))
        await asyncio.wait_for(asyncio.gather(ja, jb), 30)
        first_half = done[:24]
        assert abs(first_half.count("a") - first_half.count("b")) <= 2, done
    finally:
        sched.close()


async def test_memory_reserve_keeps_room_for_clicks():
    budget = MemoryBudget(1000)
    adm = Admission(8, budget, Metrics(), reserve=0.25)
    assert [adm.memory_reserve(c) for c in (INTERACTIVE, DEFAULT, BATCH)] == [0, 125, 250]
    async with adm.admit(BATCH) as job:
        job.charge(750)
        async with adm.admit(BATCH) as more:
            with pytest.raises(Overloaded, match="kept for better request classes"):
                more.charge(1)
        async with adm.admit(DEFAULT) as grid:
            grid.charge(125)
        async with adm.admit(INTERACTIVE) as click:
            click.charge(250)  # the whole rest of the budget
    assert budget.used == 0


def test_the_tokens_file_gives_each_token_its_best_class(tmp_path):
    from seglabel_server.errors import Unauthenticated
    from seglabel_server.transport.auth import read_tokens

    path = tmp_path / "tokens"
    path.write_text("only-one\n")  # the single-token file of before: any class
    assert read_tokens(str(path)).entries == (("only-one", INTERACTIVE),)
    path.write_text("# tokens\nteam\n\njob batch   # nightly\ntool default\n")
    tokens = read_tokens(str(path))
    assert tokens.capped
    assert [tokens.check(f"Bearer {t}") for t in ("team", "job", "tool")] == [INTERACTIVE, BATCH, DEFAULT]
    basic = "Basic " + __import__("base64").b64encode(b"ls:job").decode()
    assert tokens.check(basic, basic=True) == BATCH
    with pytest.raises(Unauthenticated):
        tokens.check(basic)  # basic auth only where Label Studio calls
    with pytest.raises(Unauthenticated):
        tokens.check("Bearer nope")
    for bad in ("job urgent\n", "a b c\n", "# nothing\n"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            read_tokens(str(path))
