#!/usr/bin/env bash
# make gpu-wheels: what a GPU machine without network needs beyond its image (python 3.12, torch
# with CUDA 13), into the ignored folder .whl/ for scripts/gpu_bench.sh:
#   - pure-Python wheels: sam2 (built here from its source, no CUDA extension), hydra-core, omegaconf,
#     antlr4-python3-runtime, iopath, open_clip_torch, ftfy, wcwidth (~3 MB);
#   - the serving path's wheels the image lacks or has in other versions, at the versions of this
#     venv, so that the stubs generated here (carried in .whl/pb/) import there: grpcio,
#     grpcio-health-checking, grpcio-reflection, protobuf, pycocotools, numba, threadpoolctl (cp312
#     manylinux, ~13 MB), and numba's llvmlite as .whl/llvmlite.tar.xz (~41 MB);
#   - onnxruntime-gpu (a CUDA 13 build: its METADATA requires nvidia-cuda-runtime~=13.0 and
#     nvidia-cudnn-cu13 for the [cuda,cudnn] extras). Its wheel is 244 MiB; unpacked and recompressed
#     with xz it is 195 MiB, split into .whl/parts/onnxruntime-gpu.tar.xz.part-aa, -ab... of PART_MB
#     each, so that each travels in its own call under the 64 MiB a call carries; gpu_bench.sh
#     joins and unpacks them into its site folder (the tar holds the wheel's files and dist-info).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PIP=${PIP:-.venv/bin/pip}
PY=${PY:-.venv/bin/python}
PART_MB=${PART_MB:-49}
ORT_GPU=${ORT_GPU:-1.31.1}
mkdir -p .whl/parts
SAM2_BUILD_CUDA=0 $PIP wheel -q --no-deps --no-build-isolation -w .whl sam2==1.1.0
$PIP wheel -q --no-deps -w .whl hydra-core omegaconf antlr4-python3-runtime==4.9.3 iopath open_clip_torch ftfy wcwidth
pins=$($PIP freeze | grep -i -E '^(grpcio|grpcio-health-checking|grpcio-reflection|protobuf|pycocotools|numba|threadpoolctl)==')
# shellcheck disable=SC2086
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins
# The generated stubs (make proto): the image has no grpcio-tools to generate them.
rm -rf .whl/pb && cp -r client/seglabel_api/pb .whl/pb
tmp=$(mktemp -d)
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  -d "$tmp" "onnxruntime-gpu==$ORT_GPU"
(cd "$tmp" && unzip -q onnxruntime_gpu-*.whl && rm onnxruntime_gpu-*.whl \
  && tar cf - onnxruntime onnxruntime_gpu-*.dist-info | xz -T0 -6 > ort.tar.xz)
# llvmlite (numba's compiler, the answer path's kernels): its 57 MiB wheel unpacked and recompressed
# with xz (about 41 MiB), one file that travels with the first call (gpu_bench.sh unpacks it).
llvm=$($PIP freeze | grep -i '^llvmlite==')
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 -d "$tmp/llvm" "$llvm"
(cd "$tmp/llvm" && unzip -q llvmlite-*.whl && rm llvmlite-*.whl && tar cf - llvmlite llvmlite-*.dist-info \
  | xz -T0 -6 > "$ROOT/.whl/llvmlite.tar.xz")
rm -f .whl/parts/onnxruntime-gpu.tar.xz.part-*
split -b "${PART_MB}m" -a 2 "$tmp/ort.tar.xz" .whl/parts/onnxruntime-gpu.tar.xz.part-
# how many parts make the whole, and its sha256: gpu_bench.sh joins them only when all are there
(cd .whl/parts && ls onnxruntime-gpu.tar.xz.part-* | wc -l && sha256sum < "$tmp/ort.tar.xz" | cut -d' ' -f1) \
  > .whl/onnxruntime-gpu.parts
rm -rf "$tmp"
ls -la .whl .whl/parts
