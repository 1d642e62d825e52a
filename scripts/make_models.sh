#!/usr/bin/env bash
# Build the model repository: official checkpoints where present (or downloadable), otherwise random
# weights of the same architectures, said loudly. Each model is chosen on its own.
set -uo pipefail
VENV=${1:-.venv}; MODELS=${2:-models}; CKPT=${3:-checkpoints}; SIZE=${4:-tiny}
SAM2_FILE="$CKPT/sam2.1_hiera_$SIZE.pt"; CLIP_FILE="$CKPT/ViT-B-32.pt"
if [ ! -s "$SAM2_FILE" ] || [ ! -s "$CLIP_FILE" ]; then
  echo "fetching official checkpoints (make checkpoints)..."
  make -s checkpoints CHECKPOINTS="$CKPT" SAM2_SIZE="$SIZE" >/dev/null 2>&1 || echo "  download failed (no network?)"
fi
SAM2="random:$SIZE"; CLIP="random:ViT-B-32"
if [ -s "$SAM2_FILE" ]; then SAM2="$SAM2_FILE"; else rm -f "$SAM2_FILE"; fi
if [ -s "$CLIP_FILE" ]; then CLIP="$CLIP_FILE"; else rm -f "$CLIP_FILE"; fi
case "$SAM2$CLIP" in
  *random:*) echo "WARNING: no official checkpoint for: $( [ "${SAM2#random:}" != "$SAM2" ] && echo "SAM2.1 ($SAM2) ")$( [ "${CLIP#random:}" != "$CLIP" ] && echo "CLIP ($CLIP)")"
             echo "WARNING: exporting RANDOM weights of the real architectures: masks and labels will be meaningless." ;;
esac
# Parity at N in {1,7,64} here (a few minutes on 2 cores); `seglabel-export verify` checks N=256 too.
exec "$VENV/bin/seglabel-export" export "$MODELS" --sam2 "$SAM2" --clip "$CLIP" --decoder-n 1,7,64
