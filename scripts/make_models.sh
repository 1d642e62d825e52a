#!/usr/bin/env bash
# Build the model repository: official checkpoints where present (or downloadable), otherwise random
# weights of the same architectures, said loudly. Each model is chosen on its own. OCR uses the real
# PP-OCR models shipped in rapidocr's wheel.
set -uo pipefail
VENV=${1:-.venv}; MODELS=${2:-models}; CKPT=${3:-checkpoints}; SIZE=${4:-tiny}; DSIZE=${5:-vits}
SAM2_FILE="$CKPT/sam2.1_hiera_$SIZE.pt"; CLIP_FILE="$CKPT/ViT-B-32.pt"; DEPTH_FILE="$CKPT/depth_anything_v2_$DSIZE.pth"
if [ ! -s "$SAM2_FILE" ] || [ ! -s "$CLIP_FILE" ] || [ ! -s "$DEPTH_FILE" ]; then
  echo "fetching official checkpoints (make checkpoints)..."
  make -s checkpoints CHECKPOINTS="$CKPT" SAM2_SIZE="$SIZE" DEPTH_SIZE="$DSIZE" >/dev/null 2>&1 || echo "  download failed (no network?)"
fi
SAM2="random:$SIZE"; CLIP="random:ViT-B-32"; DEPTH="random:$DSIZE"
if [ -s "$SAM2_FILE" ]; then SAM2="$SAM2_FILE"; else rm -f "$SAM2_FILE"; fi
if [ -s "$CLIP_FILE" ]; then CLIP="$CLIP_FILE"; else rm -f "$CLIP_FILE"; fi
if [ -s "$DEPTH_FILE" ]; then DEPTH="$DEPTH_FILE"; else rm -f "$DEPTH_FILE"; fi
RANDOM_ONES=""
[ "${SAM2#random:}" != "$SAM2" ] && RANDOM_ONES="$RANDOM_ONES SAM2.1 ($SAM2)"
[ "${CLIP#random:}" != "$CLIP" ] && RANDOM_ONES="$RANDOM_ONES CLIP ($CLIP)"
[ "${DEPTH#random:}" != "$DEPTH" ] && RANDOM_ONES="$RANDOM_ONES depth ($DEPTH)"
if [ -n "$RANDOM_ONES" ]; then
  echo "WARNING: no official checkpoint for:$RANDOM_ONES"
  echo "WARNING: exporting RANDOM weights of the real architectures: their masks, labels and depth will be meaningless."
fi
# Parity at N in {1,7,64} here (a few minutes on 2 cores); `seglabel-export verify` checks N=256 too.
exec "$VENV/bin/seglabel-export" export "$MODELS" --sam2 "$SAM2" --clip "$CLIP" --depth "$DEPTH" --ocr auto --decoder-n 1,7,64
