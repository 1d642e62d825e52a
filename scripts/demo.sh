#!/usr/bin/env bash
# make demo: start the server on the embedded default (ONNX Runtime, CPU), run the client on a
# bundled real photo with streaming (with depth and OCR when the repository has them), print the
# labels and the scene summary, write the overlay, stop the server.
set -euo pipefail
VENV=${1:-.venv}; MODELS=${2:-models}; PORT=${3:-50051}; GRID=${4:-12}
OUT=${DEMO_OUT:-demo-overlay.png}
PHOTO=client/seglabel_api/assets/astronaut.jpg
LOG=$(mktemp -t seglabel-server.XXXX.log)

HTTP_PORT=${HTTP_PORT:-5000}
"$VENV/bin/seglabel-server" --models "$MODELS" --port "$PORT" --http-port "$HTTP_PORT" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
echo "server pid $SERVER on 127.0.0.1:$PORT (log: $LOG); waiting for SERVING..."
"$VENV/bin/python" - "$PORT" <<'PY'
import sys
from seglabel_client.client import SegmenterClient
with SegmenterClient(f"127.0.0.1:{sys.argv[1]}") as c:
    c.wait_ready(timeout=600)
    info = c.server_info()
    print(f"SERVING: {info.backend} on {info.device} {list(info.providers)}")
PY
echo "HTTP/JSON gateway: http://127.0.0.1:$HTTP_PORT (web page at /, POST /upload, /segment; docs at /docs)"

EXTRA=()
if "$VENV/bin/python" - "$PORT" <<'PY'
import sys
from seglabel_client.client import SegmenterClient
with SegmenterClient(f"127.0.0.1:{sys.argv[1]}") as c:
    sys.exit(0 if c.server_info().random_weights else 1)
PY
then
  echo "WARNING: the server runs RANDOM weights (no official checkpoints here): masks and labels are"
  echo "         meaningless; the demo lowers the filters so that masks appear. Timings are real."
  EXTRA=(--pred-iou-thresh 0 --stability-score-thresh 0 --box-nms-thresh 1 --max-masks 24)
fi

# Depth and OCR ride along when the server has them (GetServerInfo says why when it does not).
SCENE=$("$VENV/bin/python" - "$PORT" <<'PY'
import sys
from seglabel_client.client import SegmenterClient
with SegmenterClient(f"127.0.0.1:{sys.argv[1]}") as c:
    info = c.server_info()
    flags = [f for f, why in (("--with-depth", info.depth_unavailable_reason), ("--with-text", info.text_unavailable_reason)) if not why]
    for what, why in (("depth", info.depth_unavailable_reason), ("text", info.text_unavailable_reason)):
        if why:
            print(f"({what} unavailable: {why})", file=sys.stderr)
    print(" ".join(flags))
PY
)
# shellcheck disable=SC2086
time "$VENV/bin/seglabel" --server "127.0.0.1:$PORT" segment "$PHOTO" --stream --grid "$GRID" --out "$OUT" "${EXTRA[@]}" $SCENE
echo "overlay: $OUT"
# DEMO_KEEP=1 make demo: keep the server up afterwards (the web page at http://127.0.0.1:$HTTP_PORT/)
if [ "${DEMO_KEEP:-0}" = 1 ]; then
  echo "server still running (web page: http://127.0.0.1:$HTTP_PORT/); Ctrl-C stops it"
  wait $SERVER
fi
