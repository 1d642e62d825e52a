"""The integration tests' server factory: a real server on 127.0.0.1 (ephemeral gRPC port), stopped
after the test."""

from __future__ import annotations

import pytest
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server


@pytest.fixture
async def make_server(tiny_repo):
    """``await make_server(load=True, pipeline=None, repo=None, **ServerConfig fields)``; ``repo``
    defaults to the tiny repository."""
    servers = []

    async def make(load: bool = True, pipeline=None, repo=None, **overrides):
        cfg = ServerConfig(port=0, models=str(repo or tiny_repo), **overrides)
        if pipeline is not None:
            cfg.pipeline = pipeline
        server = await create_server(cfg)
        servers.append(server)
        if load:
            await server.load()
        return server

    yield make
    for server in servers:
        await server.stop(0)


def metric(server, name: str, **labels) -> float:
    """A metric as the server's Prometheus endpoint (--metrics-port) shows it: what an operator sees
    of requests in flight, the memory budget and the stages' queues."""
    return server.service.metrics.value(name, **labels)


def in_flight(server) -> float:
    return metric(server, "seglabel_requests_in_flight")


def budget_at_rest(server) -> bool:
    """Nothing in flight, and the budget holds only the models' arena (charged once, kept)."""
    used = metric(server, "seglabel_memory_budget_used_bytes")
    return in_flight(server) == 0 and used == metric(server, "seglabel_memory_arena_held_bytes")
