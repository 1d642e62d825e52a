#!/usr/bin/env bash
# make gpu-wheels: what a GPU machine without network needs beyond its image (python 3.12, torch
# with CUDA 13), into the ignored folder .whl/ for scripts/gpu_bench.sh:
#   - pure-Python wheels: sam2 (built here from its source, no CUDA extension), hydra-core, omegaconf,
#     antlr4-python3-runtime, iopath, open_clip_torch, ftfy, wcwidth (~3 MB);
#   - onnxruntime-gpu (a CUDA 13 build: its METADATA requires nvidia-cuda-runtime~=13.0 and
#     nvidia-cudnn-cu13 for the [cuda,cudnn] extras), ~244 MiB, split into .whl/parts/*.part-aa, -ab...
#     of PART_MB each, so that each travels in its own call under the 64 MiB a call carries;
#     gpu_bench.sh joins them there.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/pip}
PART_MB=${PART_MB:-56}
ORT_GPU=${ORT_GPU:-1.31.1}
mkdir -p .whl/parts
SAM2_BUILD_CUDA=0 $PIP wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0
$PIP wheel -q --no-deps -w .whl hydra-core omegaconf antlr4-python3-runtime==4.9.3 iopath open_clip_torch ftfy wcwidth
tmp=$(mktemp -d)
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d "$tmp" "onnxruntime-gpu==$ORT_GPU"
for whl in "$tmp"/onnxruntime_gpu-*.whl; do
  rm -f ".whl/parts/$(basename "$whl").part-"*
  split -b "${PART_MB}m" -a 2 "$whl" ".whl/parts/$(basename "$whl").part-"
done
rm -rf "$tmp"
ls -la .whl .whl/parts
