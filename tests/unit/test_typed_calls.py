"""Calls cross every hop as methods, not names: a misspelt call through the HTTP gateway, to a Ray
replica or on the client fails in the type checker (``make lint`` runs it), not on one route at run
time. Shown by type-checking a snippet with one right and one misspelt call of each."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SNIPPET = """
from seglabel_client.client import AsyncSegmenterClient, SegmenterClient
from seglabel_server.transport.http.gateway import Gateway, LocalGateway
from seglabel_server.transport.ray.calls import on
from seglabel_server.transport.ray.replica import Replica


async def calls(gateway: Gateway, client: SegmenterClient, aclient: AsyncSegmenterClient, handle) -> None:
    await gateway.get_vocabulary("v")
    await gateway.get_vocabulary_("v")  # TYPO
    on(handle, Replica.gateway).remote(LocalGateway.segment)
    on(handle, Replica.gatewy).remote(LocalGateway.segment)  # TYPO
    on(handle, Replica.gateway).remote(LocalGateway.segmnt)  # TYPO
    client.segment(b"", points_per_side=4)
    client.segmnt(b"")  # TYPO
    client.stub.Segment
    client.stub.Segmnt  # TYPO
    await aclient.relabel("r")
    await aclient.relabl("r")  # TYPO
"""


@pytest.mark.slow  # mypy reads the server's modules: about 20 s from a cold cache
def test_a_misspelt_call_fails_the_type_check(tmp_path):
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install -e '.[dev]')")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
                                str(snippet)])  # fmt: skip
    errors = [line for line in out.splitlines() if ": error:" in line]
    flagged = sorted(int(line.split(":")[1]) for line in errors)
    typos = [i + 1 for i, line in enumerate(SNIPPET.splitlines()) if line.endswith("# TYPO")]
    assert status == 1 and flagged == typos, out + err
