"""make bench-gpu's script, end to end on the CPU with tiny models (its dry run): it builds the
models, checks parity, runs the reference, starts live servers (CPU torch, ONNX Runtime with IO
binding) and measures them over gRPC with seglabel-bench's functions, then the large-model rows
(the tiny config standing in for hiera-large). The GPU rows are not run here (no GPU); this proves
the script that produces them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the whole GPU benchmark script, dry run

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_bench_dry_run_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "gpu_bench.py"), "--device", "cpu", "--sam2", "tiny", "--clip", "tiny",
        "--large", "tiny", "--large-grid", "4", "--grids", "4", "--concurrency", "1,2", "--requests", "4", "--engines", "torch-fp32,ort-cpu",
        "--size", "256", "--masks", "8", "--profile", "torch-fp32", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_bench.json").read_text())
    rows = data["results"]
    served = [r for r in rows if r["engine"] in ("torch-fp32", "ort-cpu")]
    assert {r["engine"] for r in served} == {"torch-fp32", "ort-cpu"}
    # both benchmark inputs: random weights, and random-smooth (masks with trained-like run counts)
    assert {r["model"] for r in served} == {"hiera-tiny/random", "hiera-tiny/smooth", "hiera-large"}
    assert data["answers_smooth"]["runs_median"] * 3 < data["answers_random"]["runs_median"]
    assert 0 < data["answers_smooth"]["answer_bytes"] < data["answers_random"]["answer_bytes"]
    assert all(r["errors"] == 0 and r["requests"] == 4 and r["masks"] == 8 for r in served)
    assert all(r["stages_p50_ms"]["decoder"] > 0 and r["cold_start_s"] > 0 for r in served)
    assert any(r["engine"].startswith("reference") for r in rows)
    # the hiera-large rows' code path, with the tiny config standing in for hiera-large
    large = [r for r in rows if r["model"] == "hiera-large"]
    assert any(r["engine"].startswith("reference") for r in large)
    assert [r["concurrency"] for r in large if r["engine"] == "torch-fp32"] == [1, 2]
    assert data["answers_parity_random"]["torch fp32"]["miou"] == 1.0
    assert data["answers_parity_smooth"]["torch fp32"]["miou"] == 1.0
    # the in-process profile: every thread's sampled stacks, and the trace
    prof = (out / "profile-torch-fp32-random.txt").read_text()
    assert (
        "8 at once" in prof
        and "Python stacks" in prof
        and "clip_crop" in prof
        and (out / "trace-torch-fp32-smooth.json.gz").stat().st_size > 0
    )
    table = (out / "gpu_bench.txt").read_text()
    assert "RANDOM weights" in table and "Targets (H100" in table
    assert "input smooth: answers of" in table and "runs per mask median" in table
