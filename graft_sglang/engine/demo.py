"""``make demo``: autoregressive, dense and Graft on a few MT-bench prompts (embedded model).

Prints a table (tau = tokens per target forward, tokens/s, speedup vs autoregressive, share of
accepted tokens from grafted nodes, identical to target) and writes it to
``bench/results/demo.json``. Run: ``python -m graft_sglang.engine.demo [--prompts 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from graft_sglang.datasets import mtbench
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.methods import make_method
from graft_sglang.engine.model import DEFAULT_MODEL, load_model
from graft_sglang.engine.runner import (
    chat_ids,
    default_drafter,
    drafter_calibration,
    log,
    run_method,
    stop_ids,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "demo.json"


def _mtbench_prompts(count: int) -> list[str]:
    return [row["prompt"] for row in mtbench()[:count]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=3, help="first N MT-bench questions")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--budget", type=int, default=16, help="tree size N (root included)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="graft's pruning threshold (default: the head's calibration)")
    # One thread: on a shared 2-core machine two OpenMP threads stall each other (measured:
    # autoregressive 1 tok/s with 2 threads vs 6-8 tok/s with 1 under the same load).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    log(f"[demo] loading {args.model}")
    loaded = load_model(args.model)
    drafter, drafter_name = default_drafter(loaded.model)
    threshold = args.threshold or drafter_calibration(drafter).threshold
    log(f"[demo] drafter: {drafter_name}; graft threshold {threshold}")
    prompts = [chat_ids(loaded.tokenizer, p) for p in _mtbench_prompts(args.prompts)]
    sampling = Sampling(max_new_tokens=args.max_new_tokens,
                        stop_token_ids=stop_ids(loaded.tokenizer))
    engine = SpeculativeEngine(loaded.model, drafter)
    vocab = int(loaded.model.config.vocab_size)
    runs = []
    reference = None
    for name in ("autoregressive", "dense", "graft"):
        log(f"[demo] {name}")
        method = make_method(name, budget=args.budget, threshold=threshold, vocab_size=vocab)
        settings = {"budget": args.budget, "topk": method.topk, "depth": method.depth,
                    "threshold": threshold if name == "graft" else None}
        run = run_method(engine, method, prompts, sampling, settings, reference, log)
        if reference is None:
            reference = run.outputs
            run.identical = True
        runs.append(run)

    base = runs[0].tokens_per_s
    header = (f"{'method':<15}{'tau':>6}{'tok/s':>8}{'speedup':>9}{'grafted':>9}"
              f"{'identical to target':>21}{'e2e tok/s':>11}")
    print(f"model {loaded.name}, drafter: {drafter_name}")
    print(f"{len(prompts)} MT-bench prompts, greedy, max {args.max_new_tokens} new tokens, "
          f"N = {args.budget}, {args.threads} threads; tok/s = decoding speed (prompt prefill "
          "excluded), e2e = with prefill")
    print(header)
    rows = []
    for run in runs:
        speedup = run.tokens_per_s / base
        print(f"{run.method:<15}{run.tau:>6.2f}{run.tokens_per_s:>8.1f}{speedup:>8.2f}x"
              f"{run.grafted_share:>9.0%}{'yes' if run.identical else 'no':>21}"
              f"{run.e2e_tokens_per_s:>11.1f}")
        rows.append({**run.summary(), "speedup": speedup, "per_prompt": run.per_prompt})
    elapsed = time.perf_counter() - start
    print(f"total time {elapsed:.0f} s")
    result = {
        "model": loaded.name, "drafter": drafter_name, "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens, "budget": args.budget, "threads": args.threads,
        "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "total_seconds": elapsed, "methods": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    log(f"[demo] wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
