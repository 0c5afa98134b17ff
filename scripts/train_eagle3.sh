#!/usr/bin/env bash
# Reproduce the EAGLE-3 head for the embedded SmolLM2-135M-Instruct on a CPU, from scratch:
# self-distilled data -> TTT training -> bf16 SGLang-format export -> held-out evaluation.
# Every stage is resumable (shards and checkpoints under ~/.cache/graft-sglang/eagle3/; delete
# that folder to start over). Defaults fit a 2-core CPU in under 2 hours: WORKERS one-thread data
# generators side by side (faster than one two-thread generator on small batches), then training
# and evaluation on THREADS threads. Data stops at DATA_MINUTES (whole shards), training at
# TRAIN_MINUTES.
#   [WORKERS=2] [THREADS=2] [PROMPTS=3200] scripts/train_eagle3.sh [DATA_MINUTES=60] [TRAIN_MINUTES=45]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$(./scripts/make_venv.sh)/bin/python}"
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_MINUTES="${1:-60}"
TRAIN_MINUTES="${2:-45}"
THREADS="${THREADS:-2}"
OUT=graft_sglang/eagle3/weights/smollm2-135m-instruct

WORKERS="${WORKERS:-2}"
pids=()
for ((i = 0; i < WORKERS; i++)); do
    OMP_NUM_THREADS=1 "$PY" -m graft_sglang.eagle3.data --num-prompts "${PROMPTS:-3200}" \
        --batch-size 16 --max-new-tokens 128 --deadline-min "$DATA_MINUTES" --threads 1 \
        --worker "$i" --workers "$WORKERS" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done  # a failed worker fails the script
export OMP_NUM_THREADS="$THREADS"
"$PY" -m graft_sglang.eagle3.train --minutes "$TRAIN_MINUTES" --export "$OUT" --threads "$THREADS"
"$PY" -m graft_sglang.eagle3.evaluate --head "$OUT" --prompts 8 --max-new-tokens 64 \
    --threads "$THREADS" --out "$OUT/eval.json"
