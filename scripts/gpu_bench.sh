#!/usr/bin/env bash
# make bench-gpu: one command for a CUDA machine with no network. Installs what the repository
# carries in the ignored .whl/ (make gpu-wheels: pure-Python wheels, grpcio/protobuf/pycocotools at
# this venv's versions, the generated stubs in .whl/pb, and onnxruntime-gpu as xz parts
# .whl/parts/onnxruntime-gpu.tar.xz.part-aa, -ab... that travel one per call and are joined and
# unpacked here once all are present), checks parity and benchmarks over gRPC; results under
# ${OUT:-bench-results/gpu}. Arguments go to scripts/gpu_bench.py (--device cpu ...: the dry run).
# GPU_BENCH_SETUP_ONLY=1 installs and prints the versions without benchmarking.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench-results/gpu}
SITE=${SEGLABEL_SITE:-/tmp/seglabel-site}
mkdir -p "$OUT" "$SITE"
# The carried wheels are cp312 builds for the GPU image's python; elsewhere (the dry run) they are left alone.
if ls .whl/*.whl >/dev/null 2>&1 && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
fi
if [ -f .whl/llvmlite.tar.xz ] && [ ! -d "$SITE/llvmlite" ] && python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
  xz -dc -T0 .whl/llvmlite.tar.xz | tar xf - -C "$SITE" && echo "llvmlite unpacked into $SITE"
fi
parts=(.whl/parts/onnxruntime-gpu.tar.xz.part-*)
if [ -f .whl/onnxruntime-gpu.parts ] && [ ! -e "$SITE/onnxruntime/capi/libonnxruntime_providers_cuda.so" ]; then
  { read -r want; read -r sha; } < .whl/onnxruntime-gpu.parts
  if [ -e "${parts[0]}" ] && [ "${#parts[@]}" -eq "$want" ] && [ "$(cat "${parts[@]}" | sha256sum | cut -d' ' -f1)" = "$sha" ]; then
    cat "${parts[@]}" | xz -dc -T0 | tar xf - -C "$SITE"
    echo "onnxruntime-gpu unpacked from $want parts into $SITE"
  else
    echo "onnxruntime-gpu: $( [ -e "${parts[0]}" ] && echo "${#parts[@]}" || echo 0) of $want parts here; not installed yet"
  fi
fi
export PYTHONPATH=$SITE:$PWD/server:$PWD/export:$PWD/client:${PYTHONPATH:-}
if [ ! -f client/seglabel_api/pb/seglabel/v1/seglabel_pb2.py ]; then
  if [ -d .whl/pb ]; then cp -r .whl/pb client/seglabel_api/pb; else python3 scripts/gen_proto.py; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" || true
python3 -c 'import torch, grpc, google.protobuf as pb, onnxruntime as o, numba; print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda, "| grpcio", grpc.__version__, "| protobuf", pb.__version__, "| numba", numba.__version__, "| onnxruntime", o.__version__, o.get_available_providers())' | tee "$OUT/versions.txt" || true
[ -n "${GPU_BENCH_SETUP_ONLY:-}" ] && exit 0
python3 scripts/gpu_bench.py --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_bench.log"
