#!/usr/bin/env bash
# Issue 5 CPU table: two servers on the same models, batching on and off, measured one after the
# other by seglabel-bench (concurrency 1, 4, 16). Usage: bench_batching.sh VENV MODELS [extra bench args]
set -euo pipefail
VENV=${1:-.venv}; MODELS=${2:-models}; shift 2 || true
P1=${BENCH_PORT_ON:-50061}; P2=${BENCH_PORT_OFF:-50062}
"$VENV/bin/seglabel-server" --models "$MODELS" --port "$P1" --log-level WARNING & ON=$!
"$VENV/bin/seglabel-server" --models "$MODELS" --port "$P2" --no-batching --log-level WARNING & OFF=$!
trap 'kill $ON $OFF 2>/dev/null || true; wait 2>/dev/null || true' EXIT
"$VENV/bin/python" - "$P1" "$P2" <<'PY'
import sys
from seglabel_client.client import SegmenterClient
for port in sys.argv[1:]:
    with SegmenterClient(f"127.0.0.1:{port}") as c:
        c.wait_ready(timeout=900)
PY
"$VENV/bin/seglabel-bench" --server "batching=127.0.0.1:$P1" --server "no-batch=127.0.0.1:$P2" \
  --concurrency 1,4,16 "$@"
