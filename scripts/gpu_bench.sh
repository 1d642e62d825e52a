#!/usr/bin/env bash
# make bench-gpu: one command for a CUDA machine with no network. Installs what the repository
# carries (.whl: sam2, hydra, open_clip... as pure-Python wheels; onnxruntime-gpu, which is larger
# than one transfer, as .whl/parts/<wheel>.part-aa, -ab, ... joined here; see README), uses the
# generated stubs (make proto here first), checks parity and benchmarks over gRPC; results under
# ${OUT:-bench-results/gpu}. Arguments go to scripts/gpu_bench.py (--device cpu ...: the dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench-results/gpu}
mkdir -p "$OUT"
for first in .whl/parts/*.whl.part-aa; do
  [ -e "$first" ] || continue
  whl=.whl/$(basename "${first%.part-aa}")
  [ -e "$whl" ] || cat "${first%aa}"?? > "$whl"
done
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seglabel-site .whl/*.whl
  export PYTHONPATH=/tmp/seglabel-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/server:$PWD/export:$PWD/client:${PYTHONPATH:-}
test -f client/seglabel_api/pb/seglabel/v1/seglabel_pb2.py || python3 scripts/gen_proto.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
python3 -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "cuda", torch.version.cuda, "| onnxruntime", o.__version__, o.get_available_providers())' | tee "$OUT/versions.txt" || true
python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
