#!/usr/bin/env bash
# The full throughput benchmark on one GPU (H100/H200) in a few minutes:
#   benchmarks/gpu_throughput.sh            -> benchmarks/results/throughput-gpu.md (and $OUT/ when set)
# The same script at CPU sizes (how it is tested without a GPU):
#   SIZE=ci DEVICE=cpu RESULT=/tmp/throughput-ci.md benchmarks/gpu_throughput.sh
# Needs torch (CUDA build), pytorch-lightning, pandas, pyyaml: no Hydra, FAISS or data download.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
RESULT=${RESULT:-benchmarks/results/throughput-gpu.md}
LIMIT_S=${LIMIT_S:-540}   # stop before a 10-minute device call would
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', pl.__version__)"
timeout "$LIMIT_S" "$PY" -m benchmarks.throughput --size "$SIZE" --device "$DEVICE" --repeats "${REPEATS:-2}" --no-movielens --out "$RESULT"
cat "$RESULT"
if [ -n "${OUT:-}" ]; then
    cp "$RESULT" "$OUT/"
fi
