#!/usr/bin/env bash
# The prepared GPU check (chexrl/bench/gpu_check.py): the GRPO learner at MedGemma-4B's full size on CUDA,
# chunked log-probs against full logits, TRL's GRPOTrainer on the same model and batch, and `chexrl plan`'s
# prediction beside each measurement; JSON in OUT/gpu_check.json.
#
#   On a GPU machine (no network, no vLLM or Ray; torch, transformers, peft there), from this machine:
#     bash scripts/gpu_wheels.sh       # once: the small pure-Python wheels it lacks, into .whl/ (git-ignored)
#     device run, carry [".whl"], timeout_s 540:  bash scripts/gpu_check.sh --out $OUT
#   Here, end to end at the tiny preset's size (tests/test_gpu_check.py runs this):
#     bash scripts/gpu_check.sh --cpu --out runs/gpu_check
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
for arg in "$@"; do [ "$arg" = --cpu ] && cpu=1; done
if [ "$cpu" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    [ -x "$PY" ] || { echo "gpu_check: $PY not found; run 'make install' first" >&2; exit 2; }
else
    PY=${PYTHON:-python3}
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/chexrl-site .whl/*.whl
        export PYTHONPATH=/tmp/chexrl-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    nvidia-smi -L || { echo "gpu_check: no NVIDIA GPU visible; use --cpu here" >&2; exit 2; }
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec "$PY" -m chexrl.bench.gpu_check "$@"
