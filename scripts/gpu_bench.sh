#!/usr/bin/env bash
# make bench-gpu: one command for a CUDA machine with no network. Installs what the repository
# carries (.whl: sam2, hydra, open_clip... as pure-Python wheels; see README), uses the generated
# stubs (make proto here first), checks parity and benchmarks; results under ${OUT:-bench-results/gpu}.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seglabel-site .whl/*.whl
  export PYTHONPATH=/tmp/seglabel-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/server:$PWD/export:$PWD/client:${PYTHONPATH:-}
test -f client/seglabel_api/pb/seglabel/v1/seglabel_pb2.py || python3 scripts/gen_proto.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
