#!/usr/bin/env bash
# Reproduce the EAGLE-3 head for the embedded SmolLM2-135M-Instruct on a CPU, from scratch:
# self-distilled data -> TTT training -> bf16 SGLang-format export -> held-out evaluation.
# Every stage is resumable (shards and checkpoints under ~/.cache/graft-sglang/eagle3/; delete
# that folder to start over). One thread by default: the machine is shared; WORKERS=2 runs two
# one-thread data generators side by side (faster than one two-thread generator on small batches).
#   [THREADS=1] [WORKERS=1] [PROMPTS=3200] scripts/train_eagle3.sh [DATA_MINUTES] [TRAIN_MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-$(./scripts/make_venv.sh)/bin/python}"
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${THREADS:-1}" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DATA_MINUTES="${1:-13}"
TRAIN_MINUTES="${2:-13}"
OUT=graft_sglang/eagle3/weights/smollm2-135m-instruct

WORKERS="${WORKERS:-1}"
for ((i = 0; i < WORKERS; i++)); do
    "$PY" -m graft_sglang.eagle3.data --num-prompts "${PROMPTS:-3200}" --batch-size 16 \
        --max-new-tokens 128 --deadline-min "$DATA_MINUTES" --threads "$OMP_NUM_THREADS" \
        --worker "$i" --workers "$WORKERS" &
done
wait
"$PY" -m graft_sglang.eagle3.train --minutes "$TRAIN_MINUTES" --export "$OUT" \
    --threads "$OMP_NUM_THREADS"
"$PY" -m graft_sglang.eagle3.evaluate --head "$OUT" --prompts 8 --max-new-tokens 64 \
    --threads "$OMP_NUM_THREADS" --out "$OUT/eval.json"
