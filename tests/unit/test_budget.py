"""The runtime's working memory as budget charges (service.budget.RuntimeMemory)."""

from __future__ import annotations

import pytest
from seglabel_server.errors import Overloaded
from seglabel_server.service.budget import MemoryBudget, RuntimeMemory


def test_a_kept_arena_is_charged_when_it_grows_not_per_request():
    budget = MemoryBudget(1000)
    rt = RuntimeMemory(budget, 100, max_shares=3, kept=True)
    rt.filled(1)  # warm-up
    assert budget.used == 100 and rt.held_shares == 1
    a = rt.take()  # finds the warm share: nothing more
    assert budget.used == 100 and a.nbytes == 0
    b = rt.take()  # a second image at once: the arena grows
    assert budget.used == 200 and rt.held_shares == 2
    a.release()
    b.release()
    assert budget.used == 200 and rt.in_use == 0  # the arena keeps it until given back
    c = rt.take()
    assert budget.used == 200  # reused
    rt.released()  # given back while c runs: c's share stays charged
    assert rt.held_shares == 1 and budget.used == 100
    c.release()
    rt.released()
    assert rt.held_shares == 0 and budget.used == 0


def test_an_encoder_batch_bounds_the_shares_and_a_full_budget_refuses_growth():
    budget = MemoryBudget(250)
    rt = RuntimeMemory(budget, 100, max_shares=2, kept=True)
    first, second = rt.take(), rt.take()
    assert rt.take() is None  # a third request waits for the encoder instead of growing the arena
    assert budget.used == 200
    first.release()
    second.release()
    rt.released()
    budget.charge(200)  # someone else's request
    with pytest.raises(Overloaded):
        rt.take()
    assert rt.in_use == 0 and rt.held_shares == 0  # nothing half-taken
    rt.filled(1)  # no room: not charged, not an error
    assert rt.held_shares == 0


def test_without_an_arena_each_request_pays_its_own_share():
    budget = MemoryBudget(1000)
    rt = RuntimeMemory(budget, 100, max_shares=4, kept=False)
    rt.filled(1)
    assert budget.used == 0
    a, b = rt.take(), rt.take()
    assert budget.used == 200 and rt.held_shares == 0
    a.release()
    b.release()
    assert budget.used == 0 and rt.in_use == 0
