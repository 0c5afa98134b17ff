"""Measure the step cost model of the offline engine on this machine (not a test).

Verify cost vs tree size n at bs 1 and 4 (the embedded SmolLM2 target, float 4D mask over a
cache of ``--context-len`` tokens, logits of every node, the head's feature layers), one draft
pass of the EAGLE-3 head (``topk`` rows per request), both relative to a plain decode step at
the same batch size (``graft_sglang.cost.model.measure_costs``: interleaved rounds, median of
per-round ratios). At bs 1 it also times the engine's real drafter (``Eagle3Drafter.propose``
for 1..6 levels, interleaved with plain steps) and fits its cost per level, and the host work of
a speculative step (retrieval + tree build: ``bench.tree_build``). Checks the figures issue 16
quotes (verify ~1.5x at n = 2-4, ~2.4x at n = 16, ~8% per node beyond 4, a level ~0.1).

    python -m bench.cost_model [--threads 1] [--rounds 5]
Writes ``bench/results/cost-model-cpu.json`` (the ``CostModel`` table plus the checks).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from bench.tree_build import run as tree_build_step
from bench.tree_build import token_stream
from graft_sglang.cost.model import measure_costs
from graft_sglang.engine.cost_probe import Eagle3PassProbe, VerifyProbe, engine_cost_key
from graft_sglang.engine.drafters.eagle3 import load_eagle3_drafter
from graft_sglang.engine.model import load_model

ISSUE_QUOTES = {"verify_n2_to_4": 1.5, "verify_n16": 2.4, "per_node_beyond_4": 0.08,
                "draft_level": 0.1}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)


def engine_draft_levels(model: torch.nn.Module, drafter: object, context_len: int, topk: int,
                        depths: list[int], rounds: int) -> dict:
    """Seconds of ``drafter.propose`` per depth after a real prefix, as ratios to a plain
    decode step timed in the same round; the fitted cost per level."""
    gen = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, int(model.config.vocab_size), (context_len,), generator=gen)
    with torch.no_grad():
        out = model(input_ids=prefix[None], output_hidden_states=True)
    drafter.reset()
    drafter.observe(prefix, {layer: out.hidden_states[layer][0]
                             for layer in drafter.feature_layers})
    plain = VerifyProbe(model, context_len)
    root = int(prefix[-1])
    ratios: dict[int, list[float]] = {d: [] for d in depths}
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        plain(1, 1)
        base = time.perf_counter() - t0
        for d in depths:
            t0 = time.perf_counter()
            drafter.propose(root, topk, d)
            if r:  # round 0 warms up
                ratios[d].append((time.perf_counter() - t0) / base)
    medians = [statistics.median(ratios[d]) for d in depths]
    return {"topk": topk, "depths": depths, "propose_over_decode": medians,
            "per_level": slope([float(d) for d in depths], medians)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--context-len", type=int, default=192)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    p.add_argument("--tree-sizes", type=int, nargs="+",
                   default=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32])
    p.add_argument("--out", type=Path, default=Path("bench/results/cost-model-cpu.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)  # a shared machine: others' load moves timings
    loaded = load_model()
    drafter = load_eagle3_drafter(loaded.model)
    model = measure_costs(
        VerifyProbe(loaded.model, args.context_len, drafter.feature_layers),
        Eagle3PassProbe(drafter.head, args.context_len, args.topk),
        batch_sizes=args.batch_sizes, tree_sizes=args.tree_sizes, rounds=args.rounds,
        evidence={"context_len": args.context_len, "topk": args.topk,
                  "key": engine_cost_key(loaded.model, drafter.head, args.context_len,
                                         args.batch_sizes, args.tree_sizes)})
    print(f"measured verify / draft pass in {time.perf_counter() - t_start:.0f} s", flush=True)
    levels = engine_draft_levels(loaded.model, drafter, args.context_len, args.topk,
                                 [1, 2, 3, 4, 6], args.rounds)
    stream = token_stream(20_000)
    overhead = []
    for bs, decode in zip(model.batch_sizes, model.decode_seconds, strict=True):
        tree_build_step(bs, 16, 2, stream)  # warm-up
        row = tree_build_step(bs, 16, 20, stream)
        overhead.append((row["retrieve_us"] + row["build_us"]) * 1e-6 / decode)
    model = dataclasses.replace(model, step_overhead=tuple(overhead))
    sizes = list(model.tree_sizes)
    checks = {}
    for bs in model.batch_sizes:
        beyond = [n for n in sizes if n >= 4]
        checks[f"bs{bs}"] = {
            "verify_n2_to_4": [round(model.verify_cost(bs, n), 3) for n in (2, 3, 4)],
            "verify_n16": round(model.verify_cost(bs, 16), 3),
            "per_node_beyond_4": round(slope([float(n) for n in beyond],
                                             [model.verify_cost(bs, n) for n in beyond]), 4),
            "draft_pass": round(model.draft_cost(bs), 4),
            "step_overhead_n16": round(model.overhead(bs), 4),
        }
    checks["bs1"]["engine_draft_per_level"] = round(levels["per_level"], 4)
    result = {**model.to_dict(), "engine_drafter_levels": levels, "checks": checks,
              "issue_quotes": ISSUE_QUOTES,
              "meta": {"command": "python -m bench.cost_model", "threads": args.threads,
                       "cpu": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                       "load_average_start_end": [load_start, round(os.getloadavg()[0], 2)],
                       "wall_seconds": round(time.perf_counter() - t_start, 1)}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for bs in model.batch_sizes:
        row = model.verify[model.batch_sizes.index(bs)]
        print(f"bs {bs}: decode {model.decode_seconds[model.batch_sizes.index(bs)] * 1e3:.1f} "
              f"ms; verify(n) " + " ".join(f"{n}:{c:.2f}" for n, c in zip(sizes, row,
                                                                          strict=True)))
        print(f"  {checks[f'bs{bs}']}")
    print(f"engine drafter: {levels}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
