"""The offline comparison: every method on MT-bench or the long-context set, swept over N and the
pruning threshold, with per-step timings, a JSON record and a plot.

Run (defaults: all methods, 4 prompts, 64 new tokens):
    python -m bench.offline --dataset mtbench --budget 8 16 32 --threshold 0.05 0.1 0.2 \\
        --out bench/results/offline
Writes ``OUT/offline_<dataset>.json`` (every run: settings, tau, tokens/s, speedup, time per
stage, per-prompt rows with per-step logs) and ``OUT/offline_<dataset>.png``, and prints the best
Graft setting against the best dense setting (by tokens/s) and both at every shared N.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from bench.plot import plot
from graft_sglang.datasets import load
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.base import Drafter
from graft_sglang.engine.drafters.lm import LMDrafter, truncated_copy
from graft_sglang.engine.methods import METHODS, PAPER_MODES, make_method
from graft_sglang.engine.model import DEFAULT_MODEL, load_model
from graft_sglang.engine.runner import (
    MethodRun,
    chat_ids,
    default_drafter,
    drafter_calibration,
    log,
    run_method,
    stop_ids,
)
from graft_sglang.recipe import RETRIEVAL_SOURCES

THRESHOLDED = ("pruned", "graft")
RETRIEVING = ("retrieval", "graft")  # the methods whose retrieval source --retrieval sweeps


def make_drafter(spec: str, target: torch.nn.Module) -> tuple[Drafter | None, str]:
    """``default`` (EAGLE-3 head if present, else truncated), ``truncated:K``, ``model:PATH``
    (a separate draft LM sharing the tokenizer) or ``none``."""
    if spec == "default":
        return default_drafter(target)
    if spec == "none":
        return None, "none"
    kind, _, arg = spec.partition(":")
    if kind == "truncated" and arg.isdigit():
        return LMDrafter(truncated_copy(target, int(arg))), f"truncated target, {arg} layer(s)"
    if kind == "model" and arg:
        return LMDrafter(load_model(arg).model), f"draft model {arg}"
    raise ValueError(f"--drafter must be default, none, truncated:K or model:PATH, got {spec!r}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS),
                   choices=METHODS + PAPER_MODES)
    p.add_argument("--dataset", default="mtbench", choices=("mtbench", "longctx"))
    p.add_argument("--prompts", type=int, default=4, help="first K prompts of the dataset")
    p.add_argument("--budget", type=int, nargs="+", default=[16], help="tree sizes N to sweep")
    p.add_argument("--threshold", type=float, nargs="+", default=None,
                   help="pruning thresholds to sweep (pruned, graft; default: the head's "
                   "calibration)")
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--retrieval", nargs="+", default=["suffix"], choices=RETRIEVAL_SOURCES,
                   help="retrieval sources to sweep for retrieval and graft (both: suffix + "
                   "successor table competing for slots; the paper modes keep their own)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--drafter", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench/results/offline"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    drafter, drafter_name = make_drafter(args.drafter, loaded.model)
    calibration = drafter_calibration(drafter)
    thresholds = args.threshold or [calibration.threshold]
    log(f"[offline] model {loaded.name}, drafter: {drafter_name}; thresholds {thresholds}, "
        f"graft-paper checkpoints {list(calibration.stage_thresholds)}")
    rows = load(args.dataset)[: args.prompts]
    prompts = [chat_ids(loaded.tokenizer, r["prompt"]) for r in rows]
    log(f"[offline] {args.dataset}: {len(prompts)} prompts, "
        f"{sum(map(len, prompts)) / len(prompts):.0f} tokens on average")
    sampling = Sampling(max_new_tokens=args.max_new_tokens,
                        stop_token_ids=stop_ids(loaded.tokenizer))
    engine = SpeculativeEngine(loaded.model, drafter)
    vocab = int(loaded.model.config.vocab_size)

    result = {
        "dataset": args.dataset, "prompts": len(prompts), "model": loaded.name,
        "drafter": drafter_name, "max_new_tokens": args.max_new_tokens,
        "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "runs": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"offline_{args.dataset}.json"

    def record(run: MethodRun) -> None:
        """Append a run and rewrite the JSON, so an interrupted sweep keeps what it measured."""
        row = run.summary()
        row["speedup"] = run.tokens_per_s / ar.tokens_per_s
        row["per_prompt"] = run.per_prompt
        result["runs"].append(row)
        json_path.write_text(json.dumps(result, indent=1))

    log("[offline] autoregressive (reference)")
    ar = run_method(engine, make_method("autoregressive"), prompts, sampling, {}, progress=log)
    ar.identical = True
    record(ar)
    for name in args.methods:
        if name == "autoregressive" or (make_method(name).draft and drafter is None):
            continue
        sweep = [(budget, threshold, source) for budget in args.budget
                 for threshold in (thresholds if name in THRESHOLDED else [None])
                 for source in (args.retrieval if name in RETRIEVING else [None])]
        for budget, threshold, source in sweep:
            method = make_method(name, budget=budget, topk=args.topk, depth=args.depth,
                                 threshold=threshold or calibration.threshold,
                                 vocab_size=vocab, retrieval=source,
                                 stages=calibration.stage_policy()
                                 if name in PAPER_MODES else None)
            settings = {"budget": budget, "topk": method.topk, "depth": method.depth,
                        "threshold": threshold, "retrieval": method.retrieval}
            if method.stages is not None:
                settings["stage_thresholds"] = list(method.stages.thresholds)
            log(f"[offline] {name} {settings}")
            record(run_method(engine, method, prompts, sampling, settings, ar.outputs, log))

    report(result["runs"])
    plot(result, json_path.with_suffix(".png"))
    log(f"[offline] wrote {json_path} and {json_path.with_suffix('.png')}")
    return result


def report(rows: list[dict]) -> None:
    print(f"{'method':<15}{'N':>4}{'thr':>6}{'tau':>7}{'draft/step':>11}{'verif/step':>11}"
          f"{'tok/s':>8}{'speedup':>9}{'grafted':>9}{'identical':>10}")
    for r in rows:
        s = r["settings"]
        thr = "" if s.get("threshold") is None else f"{s['threshold']:g}"
        print(f"{r['method']:<15}{s.get('budget', 1):>4}{thr:>6}{r['tau']:>7.2f}"
              f"{r['draft_forwards_per_step']:>11.2f}{r['verified_per_step']:>11.1f}{r['tokens_per_s']:>8.1f}{r['speedup']:>8.2f}x"
              f"{r['grafted_share']:>9.0%}{'yes' if r['identical'] else 'NO':>10}")
    dense = [r for r in rows if r["method"] == "dense"]
    graft = [r for r in rows if r["method"] == "graft"]
    if dense and graft:
        best_d = max(dense, key=lambda r: r["tokens_per_s"])
        best_g = max(graft, key=lambda r: r["tokens_per_s"])
        print(f"best graft {best_g['settings']}: {best_g['tokens_per_s']:.1f} tok/s, tau "
              f"{best_g['tau']:.2f}; best dense {best_d['settings']}: "
              f"{best_d['tokens_per_s']:.1f} tok/s, tau {best_d['tau']:.2f}; ratio "
              f"{best_g['tokens_per_s'] / best_d['tokens_per_s']:.2f}x")
        for d in dense:
            n = d["settings"]["budget"]
            same_n = [g for g in graft if g["settings"]["budget"] == n]
            if same_n:
                g = max(same_n, key=lambda r: r["tau"])
                print(f"N={n}: graft tau {g['tau']:.2f} (t={g['settings']['threshold']}) vs "
                      f"dense tau {d['tau']:.2f}")


if __name__ == "__main__":
    main()
