"""Calibrate the pruning thresholds of ``graft`` and ``graft-paper`` for a target + draft head.

Measures a grid on calibration prompts (user turns sampled from the target itself, as the
head's training prompts are, with a seed no training shard uses; never MT-bench or the
long-context set, which stay for evaluation):
``graft`` over per-node thresholds, ``graft-paper`` over one scale factor on the checkpoint
thresholds (base 0.35 / 0.25 / 0.15, each capped at 1). Every point runs the offline engine,
checks its output against plain greedy decoding, and records tau, draft forwards per step and
decoding tokens/s. The best point per mode by the objective becomes the default:

- ``wall`` (default): measured decoding tokens/s on this machine;
- ``model``: tau / (1 + c * draft forwards per step), a memory-bound GPU's view, where the
  verify forward costs about the same for any tree width and a draft forward costs ``c`` target
  forwards (``--draft-cost``).

    python -m bench.calibrate --budget 16 --prompts 6 --write-head
Writes the grid to ``OUT/calibration_N<budget>.json`` and, with ``--write-head``, the chosen
thresholds to ``calibration.json`` in the head's directory (read by the engine and the plugin).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from graft_sglang.calibration import Calibration
from graft_sglang.datasets import heldout_texts
from graft_sglang.eagle3.export import WEIGHTS_DIR
from graft_sglang.eagle3.prompts import self_instruct_prompts
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.eagle3 import load_eagle3_drafter
from graft_sglang.engine.methods import make_method
from graft_sglang.engine.model import load_model
from graft_sglang.engine.runner import MethodRun, chat_ids, log, run_method, stop_ids
from graft_sglang.stages import StagePolicy

CALIBRATION_SEED = 1_000_000  # training shards draw their prompts with seeds 0, 1, 2, ...


def score(run: MethodRun, objective: str, draft_cost: float) -> float:
    if objective == "wall":
        return run.tokens_per_s
    return run.tau / (1.0 + draft_cost * run.draft_forwards_per_step)


def scaled(thresholds: tuple[float, ...], scale: float) -> tuple[float, ...]:
    return tuple(round(min(1.0, t * scale), 4) for t in thresholds)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.3],
                   help="graft's per-node thresholds to try")
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1.0, 1.5, 2.0],
                   help="factors on graft-paper's base checkpoint thresholds")
    p.add_argument("--objective", choices=("wall", "model"), default="wall")
    p.add_argument("--draft-cost", type=float, default=0.1,
                   help="draft forward cost in target forwards (objective 'model')")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/calibration"))
    p.add_argument("--write-head", action="store_true",
                   help="store the chosen thresholds as calibration.json in --head")
    args = p.parse_args(argv)
    for t in args.thresholds:
        if not 0.0 < t <= 1.0:
            p.error(f"--thresholds must be in (0, 1], got {t}")
    if any(s <= 0 for s in args.scales):
        p.error("--scales must be > 0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    loaded = load_model()
    drafter = load_eagle3_drafter(loaded.model, args.head)
    engine = SpeculativeEngine(loaded.model, drafter)
    tok = loaded.tokenizer
    texts, _ = self_instruct_prompts(loaded.model, tok, args.prompts, seed=CALIBRATION_SEED,
                                     exclude=heldout_texts())
    prompts = [chat_ids(tok, t) for t in texts]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, stop_token_ids=stop_ids(tok))
    vocab = int(loaded.model.config.vocab_size)
    log(f"[calibrate] {len(prompts)} calibration prompts, N={args.budget}, "
        f"objective {args.objective}")

    reference = run_method(engine, make_method("autoregressive"), prompts, sampling, {})
    grid: list[dict] = []

    def measure(name: str, settings: dict, **kwargs: object) -> None:
        method = make_method(name, budget=args.budget, vocab_size=vocab, **kwargs)
        run = run_method(engine, method, prompts, sampling, settings, reference.outputs)
        if not run.identical:
            raise AssertionError(f"{name} {settings}: output differs from greedy decoding")
        point = {"method": name, **settings, "tau": run.tau, "tokens_per_s": run.tokens_per_s,
                 "draft_forwards_per_step": run.draft_forwards_per_step,
                 "verified_per_step": run.verified_per_step,
                 "score": score(run, args.objective, args.draft_cost)}
        grid.append(point)
        log(f"[calibrate] {name} {settings}: tau {run.tau:.2f}, {run.tokens_per_s:.1f} tok/s, "
            f"{point['draft_forwards_per_step']:.2f} draft fwd/step, score {point['score']:.3f}")

    for t in args.thresholds:
        measure("graft", {"threshold": t}, threshold=t)
    base = StagePolicy().thresholds
    for s in args.scales:
        stage_t = scaled(base, s)
        measure("graft-paper", {"scale": s, "stage_thresholds": list(stage_t)},
                stages=StagePolicy(thresholds=stage_t))

    def best(name: str) -> dict:
        return max((g for g in grid if g["method"] == name), key=lambda g: g["score"])

    chosen_graft, chosen_paper = best("graft"), best("graft-paper")
    calibration = Calibration(
        threshold=chosen_graft["threshold"],
        stage_thresholds=tuple(chosen_paper["stage_thresholds"]),
        evidence={"command": "python -m bench.calibrate " + " ".join(argv or []),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                  "prompts": len(prompts), "prompt_source": "self-instruct (sampled from the "
                  f"target), seed {CALIBRATION_SEED}", "max_new_tokens": args.max_new_tokens,
                  "budget": args.budget, "objective": args.objective,
                  "draft_cost": args.draft_cost, "threads": args.threads,
                  "autoregressive_tokens_per_s": reference.tokens_per_s, "grid": grid})
    log(f"[calibrate] chosen: graft threshold {calibration.threshold}, graft-paper "
        f"thresholds {list(calibration.stage_thresholds)}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"calibration_N{args.budget}.json"
    out.write_text(json.dumps({"threshold": calibration.threshold,
                               "stage_thresholds": list(calibration.stage_thresholds),
                               **calibration.evidence}, indent=1) + "\n")
    log(f"[calibrate] wrote {out}")
    if args.write_head:
        log(f"[calibrate] wrote {calibration.save(args.head)}")
    return {"calibration": calibration, "grid": grid}


if __name__ == "__main__":
    main()
