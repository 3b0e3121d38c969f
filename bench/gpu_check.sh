#!/usr/bin/env bash
# GPU check (under 8 minutes): evalfleet's hf and vllm backends and lm-eval's hf backend on the
# same model and tasks; prints per-sample agreement and throughput, JSON last line.
#
# Needs a CUDA machine with the venv made by `make install` plus vllm
# (`.venv/bin/pip install -e '.[vllm]'`), models/ and ../shared/data beside the repo.
# Usage: bench/gpu_check.sh [--limit 200] [--tasks arc_easy,gsm8k] [--dtype float32]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA_DIR=${EVALFLEET_DATA_DIR:-$(cd .. && pwd)/shared/data}
export EVALFLEET_DATA_DIR=$DATA_DIR HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to $PY" >&2; exit 2
fi
if ! "$PY" -c 'import vllm' 2>/dev/null; then
  echo "gpu_check: vllm is not installed: $PY -m pip install -e '.[vllm]'" >&2; exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
INCLUDE=$(mktemp -d)
"$PY" ../shared/tools/lmeval_local.py "$DATA_DIR" "$INCLUDE" >/dev/null
# 470 s: the whole check, engine starts included, stays under 8 minutes.
timeout 470 "$PY" bench/gpu_check.py --include "$INCLUDE" "$@"
