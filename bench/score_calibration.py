"""Are the tree builder's node scores calibrated reach probabilities? (not a test)

Runs the offline engine (the embedded SmolLM2 target, the shipped EAGLE-3 head, method
``graft`` with the head's calibrated threshold, greedy) and records every verified tree. A
node's label is whether verification accepted it (recovered from the committed tokens: the
accepted path is the unique root path spelling them). Reports, per source (draft only,
retrieved only, both), a reliability table by score decile, the expected calibration error
(ECE), the Brier score, and per step the predicted expected accepted length (sum of reach over
the verified nodes) against the realised one.

Evaluation prompts: MT-bench (the first ``--eval-prompts``) and two long-context prompts; a
monotone correction per source (``cost.acceptance.fit_isotonic``) is fitted on other prompts
(user turns the target samples itself, seed 1,000,000 as ``bench/calibrate.py``, plus two other
long-context prompts) and scored on the evaluation prompts. Also fits the draft's per-depth
decay for ``cost.decision.plan_draft`` and simulates ``choose_verify_size`` on the recorded
trees with the measured cost model (``bench/results/cost-model-cpu.json``): realised tokens of
the verified prefix (the accepted path cut to the prefix) over modelled step cost.

    python -m bench.score_calibration [--eval-prompts 6] [--fit-prompts 6]
Writes ``bench/results/score-calibration.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from graft_sglang.cost.acceptance import (
    SOURCE_CLASSES,
    ScoreCalibration,
    fit_isotonic,
    reach_probabilities,
    source_class,
)
from graft_sglang.cost.decision import choose_verify_size
from graft_sglang.cost.model import CostModel, load_cost_model
from graft_sglang.datasets import heldout_texts, longctx, mtbench
from graft_sglang.eagle3.prompts import self_instruct_prompts
from graft_sglang.engine.decode import Generation, Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.eagle3 import load_eagle3_drafter
from graft_sglang.engine.methods import Method, make_method
from graft_sglang.engine.model import load_model
from graft_sglang.engine.runner import chat_ids, drafter_calibration, log, stop_ids
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree, NodeSource
from graft_sglang.tree.draft import DraftCandidates

CALIBRATION_SEED = 1_000_000  # as bench/calibrate.py: no training shard draws this seed
EVAL_LONGCTX = ("edit-colorsys", "quote-colorsys")
FIT_LONGCTX = ("edit-bisect", "quote-bisect")
DEPTHS = 6


@dataclass
class Step:
    """One verified tree and what verification accepted (``accepted``: tree node indices,
    root excluded)."""

    tree: GraftTree
    level0: list[float]  # the draft's level-0 confidences (empty: no draft)
    passes: int
    host_seconds: float  # retrieval + tree build
    accepted: list[int] = field(default_factory=list)
    prompt: int = 0


class RecordingDrafter:
    """A ``Drafter`` that remembers its last proposal's level-0 confidences."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.feature_layers = inner.feature_layers
        self.last_level0: list[float] = []

    @property
    def forward_count(self) -> int:
        return self.inner.forward_count

    def reset(self) -> None:
        self.inner.reset()

    def observe(self, token_ids: torch.Tensor, features: dict[int, torch.Tensor]) -> None:
        self.inner.observe(token_ids, features)

    def propose(self, root_token: int, topk: int, depth: int,
                stop: Callable[[int, float], bool] | None = None) -> DraftCandidates:
        draft = self.inner.propose(root_token, topk, depth, stop)
        self.last_level0 = draft.scores[0, :topk].tolist()
        return draft


class RecordingEngine(SpeculativeEngine):
    """The engine, keeping every step's tree (one request at a time)."""

    steps: list[Step]

    def _step_tree(self, gen: Generation, method: Method, step: GraftStep,
                   drafter: object, rid: str, root: int, seq_len: int) -> tuple[GraftTree, int]:
        passes, before = gen.draft_forwards, dict(gen.seconds)
        tree, window = super()._step_tree(gen, method, step, drafter, rid, root, seq_len)
        host = sum(gen.seconds[k] - before[k] for k in ("retrieve", "build"))
        self.steps.append(Step(tree, list(self.drafter.last_level0), gen.draft_forwards - passes,
                               host))
        return tree, window


def label(steps: Sequence[Step], gen: Generation) -> list[Step]:
    """Attach accepted nodes from the committed tokens; the last step is dropped (its
    tokens may be cut by a stop condition)."""
    out, pos = [], 0
    for step, log_row in zip(steps, gen.step_log, strict=True):
        k = log_row["accepted"]
        tokens, parents = step.tree.tokens[0].tolist(), step.tree.parents[0].tolist()
        node, path = 0, []
        for t in gen.tokens[pos : pos + k]:
            node = next(c for c in range(len(tokens)) if parents[c] == node and tokens[c] == t)
            path.append(node)
        step.accepted = path
        pos += k + 1
        out.append(step)
    return out[:-1]


def generate(engine: RecordingEngine, method: Method, prompts: Sequence[list[int]],
             sampling: Sampling, tag: str) -> list[Step]:
    engine.shared_retriever = SuffixRetriever()
    steps: list[Step] = []
    for i, prompt in enumerate(prompts):
        engine.steps = []
        t0 = time.perf_counter()
        gen = engine.generate(prompt, method, sampling)
        for step in label(engine.steps, gen):
            step.prompt = i
            steps.append(step)
        log(f"  {tag} {i + 1}/{len(prompts)}: {len(gen.tokens)} tokens, tau {gen.tau:.2f}, "
            f"{time.perf_counter() - t0:.1f} s")
    return steps


CalibrationOf = Callable[[Step], ScoreCalibration | None]


def node_samples(steps: Sequence[Step], calibration_of: CalibrationOf) -> dict[str, torch.Tensor]:
    """Every verified non-root, non-filler node: score, its calibrated prediction (no path
    cap: a per-node reliability view), source class, depth, accepted."""
    scores, preds, classes, depths, accepted = [], [], [], [], []
    for step in steps:
        t = step.tree
        real = (t.source[0] & int(NodeSource.FILLER)) == 0
        real[0] = False
        hit = torch.zeros_like(real)
        hit[step.accepted] = True
        calibration = calibration_of(step)
        pred = t.scores[0] if calibration is None else calibration.apply(t.scores[0],
                                                                          t.source[0])
        scores.append(t.scores[0][real])
        preds.append(pred[real])
        classes.append(source_class(t.source[0][real]))
        depths.append(t.layout.depth[0][real])
        accepted.append(hit[real])
    return {"score": torch.cat(scores).float(), "pred": torch.cat(preds).float(),
            "cls": torch.cat(classes), "depth": torch.cat(depths),
            "accepted": torch.cat(accepted).float()}


def reliability(pred: torch.Tensor, hit: torch.Tensor, bins: int = 10) -> dict:
    """Equal-count bins by prediction: rows of (count, mean predicted, observed rate); ECE
    (count-weighted |predicted - observed|) and Brier score."""
    if pred.numel() == 0:
        return {"count": 0}
    order = torch.sort(pred, stable=True).indices
    rows, ece = [], 0.0
    for idx in torch.tensor_split(order, min(bins, pred.numel())):
        p, h = float(pred[idx].mean()), float(hit[idx].mean())
        rows.append({"count": idx.numel(), "predicted": round(p, 4), "observed": round(h, 4)})
        ece += idx.numel() * abs(p - h)
    return {"count": pred.numel(), "ece": round(ece / pred.numel(), 4),
            "brier": round(float((pred - hit).pow(2).mean()), 4),
            "mean_predicted": round(float(pred.mean()), 4),
            "mean_observed": round(float(hit.mean()), 4), "deciles": rows}


def by_source(samples: dict[str, torch.Tensor]) -> dict:
    pred = samples["pred"]
    out = {"all": reliability(pred, samples["accepted"])}
    for i, name in enumerate(SOURCE_CLASSES):
        m = samples["cls"] == i
        out[name] = reliability(pred[m], samples["accepted"][m])
    return out


def step_totals(steps: Sequence[Step], calibration_of: CalibrationOf) -> dict:
    """Predicted (sum of reach over the verified tree) vs realised accepted nodes per step."""
    pred = [float(reach_probabilities(s.tree, calibration_of(s))[0, 1:].sum()) for s in steps]
    real = [float(len(s.accepted)) for s in steps]
    return {"steps": len(steps), "mean_predicted": round(statistics.fmean(pred), 4),
            "mean_realised": round(statistics.fmean(real), 4),
            "mean_abs_error": round(statistics.fmean(abs(p - r) for p, r in
                                                     zip(pred, real, strict=True)), 4),
            "correlation": round(statistics.correlation(pred, real), 4)
            if len(steps) > 2 and len(set(pred)) > 1 and len(set(real)) > 1 else None}


def fit(steps: Sequence[Step], bins: int, min_count: int) -> ScoreCalibration:
    samples = node_samples(steps, lambda _: None)
    knots = {}
    counts = {}
    for i, name in enumerate(SOURCE_CLASSES):
        m = samples["cls"] == i
        counts[name] = int(m.sum())
        if counts[name] >= min_count:
            knots[name] = fit_isotonic(samples["score"][m], samples["accepted"][m], bins)
    return ScoreCalibration(knots, {"fit_nodes": counts, "bins": bins, "min_count": min_count})


def depth_profile(steps: Sequence[Step], calibration: ScoreCalibration | None) -> dict:
    """Per depth d: share of steps whose accepted path reaches d through a draft-flagged node;
    the fitted decay (geometric mean of successive ratios) and the calibrated level-0 mass."""
    reached = [0] * DEPTHS
    drafted = [s for s in steps if s.level0]
    for s in drafted:
        source = s.tree.source[0].tolist()
        for d, node in enumerate(s.accepted[:DEPTHS]):
            if source[node] & NodeSource.DRAFT:
                reached[d] += 1
            else:
                break
    share = [r / max(1, len(drafted)) for r in reached]
    ratios = [b / a for a, b in itertools.pairwise(share) if a > 0 and b > 0]
    decay = statistics.geometric_mean(ratios) if ratios else None
    flags = torch.tensor([int(NodeSource.DRAFT)])
    level0 = [float(calibration.apply(torch.tensor(s.level0), flags.expand(len(s.level0))).sum())
              if calibration is not None else sum(s.level0) for s in drafted]
    return {"steps": len(drafted), "draft_reach_share_by_depth": [round(x, 4) for x in share],
            "decay": None if decay is None else round(decay, 4),
            "mean_level0_mass": round(statistics.fmean(level0), 4) if level0 else None}


def simulate(steps: Sequence[Step], cost: CostModel, sizes: Sequence[int],
             calibration_of: CalibrationOf) -> dict:
    """Cost-aware verify sizes on the recorded trees vs verifying each whole tree: realised
    tokens (accepted path within the verified prefix + bonus) over modelled step cost."""
    full_tokens = full_cost = aware_tokens = aware_cost = 0.0
    chosen: dict[int, int] = {}
    for s in steps:
        sunk = cost.draft_cost(1, s.passes) + cost.overhead(1)
        width = int(s.tree.num_real[0])
        full_tokens += len(s.accepted) + 1
        full_cost += sunk + cost.verify_cost(1, width)
        reach = reach_probabilities(s.tree.truncated(width), calibration_of(s))
        choice = choose_verify_size(reach, cost, sizes, sunk)
        kept = set(choice.order[0, : choice.size].tolist())
        inside = 0
        for node in s.accepted:
            if node not in kept:
                break
            inside += 1
        aware_tokens += inside + 1
        aware_cost += choice.cost
        chosen[choice.size] = chosen.get(choice.size, 0) + 1
    return {"full_tree": {"tokens_per_step": round(full_tokens / len(steps), 4),
                          "tokens_per_unit_cost": round(full_tokens / full_cost, 4)},
            "cost_aware": {"tokens_per_step": round(aware_tokens / len(steps), 4),
                           "tokens_per_unit_cost": round(aware_tokens / aware_cost, 4),
                           "chosen_sizes": dict(sorted(chosen.items()))},
            "gain": round((aware_tokens / aware_cost) / (full_tokens / full_cost), 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-prompts", type=int, default=6, help="first N MT-bench questions")
    p.add_argument("--fit-prompts", type=int, default=6, help="self-instruct prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--min-count", type=int, default=50,
                   help="fit a source's correction only with this many nodes")
    p.add_argument("--cost-model", type=Path, default=Path("bench/results/cost-model-cpu.json"))
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/results/score-calibration.json"))
    p.add_argument("--steps-cache", type=Path, default=None,
                   help="reuse the recorded trees in this file (torch.save) if it exists, "
                        "else record and save them there")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)  # a shared machine: others' load moves timings
    loaded = load_model()
    tok = loaded.tokenizer
    drafter = RecordingDrafter(load_eagle3_drafter(loaded.model))
    threshold = drafter_calibration(drafter.inner).threshold
    engine = RecordingEngine(loaded.model, drafter)
    method = make_method("graft", budget=args.budget, threshold=threshold,
                         vocab_size=int(loaded.model.config.vocab_size))
    sampling = Sampling(max_new_tokens=args.max_new_tokens, stop_token_ids=stop_ids(tok))
    from_cache = args.steps_cache is not None and args.steps_cache.is_file()
    if from_cache:
        steps = torch.load(args.steps_cache, weights_only=False)
    else:
        rows = {r["id"]: r["prompt"] for r in longctx()}
        sets = {
            "eval-mtbench": [r["prompt"] for r in mtbench()[: args.eval_prompts]],
            "eval-longctx": [rows[i] for i in EVAL_LONGCTX],
            "fit-selfinstruct": self_instruct_prompts(loaded.model, tok, args.fit_prompts,
                                                      seed=CALIBRATION_SEED,
                                                      exclude=heldout_texts())[0],
            "fit-longctx": [rows[i] for i in FIT_LONGCTX],
        }
        steps = {name: generate(engine, method, [chat_ids(tok, t) for t in texts], sampling,
                                name) for name, texts in sets.items()}
        if args.steps_cache is not None:
            torch.save(steps, args.steps_cache)
    fit_steps = steps["fit-selfinstruct"] + steps["fit-longctx"]
    calibration = fit(fit_steps, args.bins, args.min_count)
    cost = load_cost_model(args.cost_model)

    def evaluate(name: str, calibration_of: CalibrationOf) -> dict:
        return {"nodes": by_source(node_samples(steps[name], calibration_of)),
                "steps": step_totals(steps[name], calibration_of),
                "simulated": simulate(steps[name], cost, args.sizes, calibration_of)}

    report: dict = {}
    for name in ("eval-mtbench", "eval-longctx"):
        # Two folds by prompt (even / odd): each fold's correction is fitted on the other.
        folds = {k: fit([s for s in steps[name] if s.prompt % 2 != k], args.bins,
                        args.min_count) for k in (0, 1)}
        report[name] = {
            "raw": evaluate(name, lambda _: None),
            "corrected_other_prompts": evaluate(name, lambda _: calibration),
            "corrected_cross_fit": evaluate(name, lambda s, f=folds: f[s.prompt % 2]),
            "depth_profile": depth_profile(steps[name], None),
            "host_seconds_per_step": round(statistics.fmean(s.host_seconds
                                                            for s in steps[name]), 5),
        }
    result = {
        "calibration": calibration.to_dict(),
        "fit_depth_profile": depth_profile(fit_steps, None),
        **report,
        "meta": {"command": "python -m bench.score_calibration", "method": "graft",
                 "budget": args.budget, "threshold": threshold, "topk": method.topk,
                 "depth": method.depth, "max_new_tokens": args.max_new_tokens,
                 "prompts": {k: len({s.prompt for s in v}) for k, v in steps.items()},
                 "steps": {k: len(v) for k, v in steps.items()},
                 "steps_from_cache": from_cache,
                 "fit_prompt_source": f"self-instruct seed {CALIBRATION_SEED} + "
                                      f"{', '.join(FIT_LONGCTX)}",
                 "cost_model": str(args.cost_model), "sizes": args.sizes,
                 "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                 "load_average_start_end": [load_start, round(os.getloadavg()[0], 2)],
                 "wall_seconds": round(time.perf_counter() - t_start, 1)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("eval-mtbench", "eval-longctx"):
        for kind in ("raw", "corrected_other_prompts", "corrected_cross_fit"):
            r = report[name][kind]
            nodes = r["nodes"]
            log(f"{name} {kind}: ECE " + ", ".join(
                f"{c} {nodes[c].get('ece')} (n={nodes[c]['count']})"
                for c in ("all", *SOURCE_CLASSES)) + f"; per step predicted "
                f"{r['steps']['mean_predicted']} vs realised {r['steps']['mean_realised']}; "
                f"simulated cost-aware gain {r['simulated']['gain']}x "
                f"{r['simulated']['cost_aware']['chosen_sizes']}")
        log(f"{name} depth profile: {report[name]['depth_profile']}")
    log(f"wrote {args.out} ({time.perf_counter() - t_start:.0f} s)")
    return result


if __name__ == "__main__":
    main()
