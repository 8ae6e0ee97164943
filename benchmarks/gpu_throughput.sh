#!/usr/bin/env bash
# The full throughput benchmark on one GPU (H100/H200) in a few minutes:
#   benchmarks/gpu_throughput.sh            -> benchmarks/results/throughput-gpu.md (and $OUT/ when set)
# The same script at CPU sizes (how it is tested without a GPU):
#   SIZE=ci DEVICE=cpu RESULT=/tmp/throughput-ci.md benchmarks/gpu_throughput.sh
# Needs torch (CUDA build), pytorch-lightning, torchmetrics, pandas, pyarrow, pyyaml: no Hydra, FAISS or data download.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${SIZE:-full}
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
RESULT=${RESULT:-benchmarks/results/throughput-gpu.md}
LIMIT_S=${LIMIT_S:-540}   # both steps together: stop before a 10-minute device call would
FEED_LIMIT_S=${FEED_LIMIT_S:-90}
if [ "$SIZE" = ci ]; then FEED_ROWS=${FEED_ROWS:-2e5}; else FEED_ROWS=${FEED_ROWS:-1e7}; fi
export PYTHONUNBUFFERED=1

if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$PY" -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'lightning', pl.__version__)"
timeout "$((LIMIT_S - FEED_LIMIT_S))" "$PY" -m benchmarks.throughput --size "$SIZE" --device "$DEVICE" --repeats "${REPEATS:-2}" --no-movielens --out "$RESULT"
# The data path feeding the device (issue 20): the sharded training stream, every batch copied to the device, next to a
# bare pyarrow read; appended to $RESULT. Its failure is reported there and does not lose the figures above.
timeout "$FEED_LIMIT_S" "$PY" -m benchmarks.shards_scale --device-feed "$DEVICE" --sizes "$FEED_ROWS" --eval-users 1000 \
    --dir "${TMPDIR:-/tmp}/twotower_device_feed" --out "$RESULT" \
    || printf '\n## Data path feeding the device\n\nFailed or past %s s (exit %s): see the log.\n' "$FEED_LIMIT_S" "$?" >> "$RESULT"
cat "$RESULT"
if [ -n "${OUT:-}" ]; then
    cp "$RESULT" "$OUT/"
fi
