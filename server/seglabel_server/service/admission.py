"""Admission, the service's door: at most ``max_inflight`` requests at once, and each admitted request
charged an upper bound of its peak memory against the budget before any work (its :class:`Ticket`).
A request that does not fit is refused at once with a pushback (when a place is likely to free).
Both keep a reserve for the better classes (``reserve``: a share of the places that default requests
may not take and batch requests twice that; of the memory budget, half of it and it), so a saturating job
cannot make a click RESOURCE_EXHAUSTED; each admitted request gets its fair-share turn
(:class:`~seglabel_server.scheduler.batching.FairClock`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from seglabel_server.errors import Overloaded
from seglabel_server.metrics import Metrics
from seglabel_server.scheduler.batching import DEFAULT, FairClock
from seglabel_server.service.budget import Charge, MemoryBudget, RuntimeMemory
from seglabel_server.types import RequestContext


class Ticket:
    """One admitted request: the memory it was charged, released when it leaves."""

    def __init__(self, admission: Admission, priority: int = DEFAULT):
        self._admission = admission
        self.priority = priority
        self.turn = 0
        self.charges: list[Charge] = []

    def charge(self, nbytes: int) -> None:
        """Charge ``nbytes`` of peak memory: Overloaded (with a pushback) while the budget is full,
        LimitExceeded when the request could never fit."""
        try:
            headroom = self._admission.memory_reserve(self.priority)
            self.charges.append(self._admission.budget.charge(nbytes, headroom=headroom))
        except Overloaded as exc:
            raise self._admission.refused("memory", exc) from None

    def take_runtime(self) -> None:
        """A share of the models' working memory on the host (:class:`RuntimeMemory`); nothing when
        the models run elsewhere (a GPU), or an encoder batch of requests holds the shares already."""
        runtime = self._admission.runtime
        if runtime is None:
            return
        try:
            share = runtime.take(self._admission.memory_reserve(self.priority))
        except Overloaded as exc:
            raise self._admission.refused("memory", exc) from None
        if share is not None:
            self.charges.append(share)

    def release(self) -> None:
        for c in self.charges:
            c.release()
        self.charges.clear()


class Admission:
    """``inflight``: requests admitted now; ``idle`` is set whenever there are none, and
    ``on_idle`` (the lifecycle's) runs each time the last one leaves. ``runtime``: the models'
    working memory on the host as charges (set once they are loaded, where they run on the host)."""

    def __init__(self, max_inflight: int, budget: MemoryBudget, metrics: Metrics, reserve: float = 0.0):
        self.max_inflight, self.budget, self.metrics = max_inflight, budget, metrics
        # places kept for the better classes: interactive may take all, default all but one reserve,
        # batch all but two (at least one place each); memory: see memory_reserve
        self.reserve = min(max(reserve, 0.0), 0.45)
        self.reserved = int(max_inflight * self.reserve)
        self.fair = FairClock()
        self.runtime: RuntimeMemory | None = None
        self.inflight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.on_idle: Callable[[], None] | None = None
        self.hold_s = 1.0  # moving mean of how long an admitted request holds its place (s)
        metrics.inflight.set_function(lambda: self.inflight)
        metrics.budget_used.set_function(lambda: self.budget.used)
        metrics.arena_images.set_function(lambda: self.runtime.held_shares if self.runtime else 0)
        metrics.arena_bytes.set_function(lambda: self.runtime.held_bytes if self.runtime else 0)

    def retry_after_ms(self) -> int:
        """When a refused request is likely to find room: a place frees every (mean time a request
        is held / requests in flight), on average; between 50 ms and 10 s."""
        return int(min(10_000, max(50, 1000 * self.hold_s / max(1, self.inflight))))

    def refused(self, why: str, exc: Overloaded) -> Overloaded:
        """``exc`` counted (``seglabel_rejected{stage=why}``) and given the pushback."""
        self.metrics.rejected.labels(why).inc()
        exc.retry_after_ms = self.retry_after_ms()
        return exc

    def limit(self, priority: int = DEFAULT) -> int:
        """The in-flight places a request of class ``priority`` may find taken and still come in."""
        return max(1, self.max_inflight - self.reserved * priority)

    def memory_reserve(self, priority: int = DEFAULT) -> int:
        """Bytes of the memory budget a request of class ``priority`` must leave free: half the
        reserve for default requests, the reserve for batch ones (a click needs far less memory than
        a grid: a share of places' worth would idle a memory-bound job)."""
        return int(self.budget.limit * self.reserve * priority / 2)

    @contextlib.asynccontextmanager
    async def admit(
        self, priority: int = DEFAULT, share: str = "", ctx: RequestContext | None = None
    ) -> AsyncIterator[Ticket]:
        """One request in: counted against the in-flight places its class may take (Overloaded when
        they are taken: batch requests first), its ticket's charges released whatever the exit.
        ``ticket.turn``: its fair-share turn among the requests of other ``share`` s (jobs, callers;
        empty: the caller's, ``ctx.share``). ``ctx`` (the request's, for the scheduler) lowers the
        class to its token's best (``ctx.ceiling``) and gets the class, turn and admission time."""
        if ctx is not None:
            priority, share = max(priority, ctx.ceiling), share or ctx.share
        limit = self.limit(priority)
        if self.inflight >= limit:
            raise self.refused(
                "admission",
                Overloaded(
                    f"{self.inflight} requests in flight (limit {limit} for this request's class, "
                    f"{self.max_inflight} in all); retry later"
                ),  # fmt: skip
            )
        self.inflight += 1
        self.idle.clear()
        ticket, t0 = Ticket(self, priority), time.monotonic()
        ticket.turn = self.fair.take(share)
        if ctx is not None:
            ctx.priority, ctx.turn, ctx.admitted = priority, ticket.turn, time.monotonic()
        try:
            yield ticket
        finally:
            self.hold_s += 0.2 * (time.monotonic() - t0 - self.hold_s)
            self.fair.done(ticket.turn)
            self.inflight -= 1
            ticket.release()
            if self.inflight == 0:
                self.idle.set()
                if self.on_idle is not None:
                    self.on_idle()
