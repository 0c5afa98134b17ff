"""Held-out evaluation of an exported head on MT-bench first turns (greedy).

- agreement: top-1 agreement of each unrolled draft step with the target's greedy token, on the
  target's own greedy responses (teacher forcing: step 0 = first-step agreement); its ceiling is
  the share of response tokens inside the draft vocabulary (``draft_vocab_coverage``);
- tau: mean tokens committed per target forward of the offline engine with a dense EAGLE tree of
  ``--budget`` nodes (SGLang's EAGLE-2 selection), lossless by construction;
- cost: seconds per head forward during ``propose`` versus one target decode step (one token
  on the cached prompt), both on the same threads.

    python -m graft_sglang.eagle3.evaluate --head graft_sglang/eagle3/weights/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from graft_sglang.datasets import mtbench
from graft_sglang.eagle3.data import generate_batch
from graft_sglang.eagle3.train import collate, target_to_draft_map, ttt_loss
from graft_sglang.engine.cached_lm import CachedLM
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.eagle3 import WEIGHTS_DIR, load_eagle3_drafter
from graft_sglang.engine.methods import make_method
from graft_sglang.engine.model import load_model
from graft_sglang.engine.runner import chat_ids, stop_ids


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def draft_step_cost(target: torch.nn.Module, drafter, prompt: list[int], topk: int, depth: int,
                    repeats: int = 7) -> dict:
    lm = CachedLM(target, drafter.feature_layers)
    _, feats = lm.forward(torch.tensor(prompt[:-1]), torch.arange(len(prompt) - 1))
    drafter.reset()
    drafter.observe(torch.tensor(prompt[:-1]), feats)
    n = lm.cached_len

    def decode_step() -> None:
        lm.forward(torch.tensor([prompt[-1]]), torch.tensor([n]), last_logits_only=True)
        lm.truncate(n)

    before = drafter.forward_count
    drafter.propose(prompt[-1], topk, depth)
    forwards = drafter.forward_count - before
    with torch.no_grad():
        target_s = _median_seconds(decode_step, repeats)
    propose_s = _median_seconds(lambda: drafter.propose(prompt[-1], topk, depth), repeats)
    return {"target_decode_ms": 1e3 * target_s, "draft_forwards_per_propose": forwards,
            "draft_step_ms": 1e3 * propose_s / forwards,
            "ratio": propose_s / forwards / target_s, "context": n, "topk": topk}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--head", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--prompts", type=int, default=16, help="first N MT-bench questions")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--topk", type=int, default=4)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model()
    target, tok = loaded.model, loaded.tokenizer
    drafter = load_eagle3_drafter(target, args.head)
    prompts = [q["prompt"] for q in mtbench()[: args.prompts]]

    rows = generate_batch(target, tok, prompts, args.max_new_tokens, drafter.feature_layers)
    with torch.no_grad():
        _, agreement = ttt_loss(drafter.head, collate(rows), args.depth,
                                target_to_draft_map(drafter.head))
    response = torch.cat([r["tokens"][r["prompt_len"]:].long() for r in rows])
    coverage = float(drafter.head.t2d[response].float().mean())
    print(f"[eval] top-1 agreement per draft step: {[round(a, 3) for a in agreement]}; "
          f"draft-vocabulary coverage of the responses {coverage:.3f}", file=sys.stderr)

    engine = SpeculativeEngine(target, drafter)
    method = make_method("dense", budget=args.budget, topk=args.topk, depth=args.depth,
                         vocab_size=len(tok))
    sampling = Sampling(max_new_tokens=args.max_new_tokens, stop_token_ids=stop_ids(tok))
    tokens = steps = 0
    for prompt in prompts:
        gen = engine.generate(chat_ids(tok, prompt), method, sampling)
        tokens += len(gen.tokens)
        steps += gen.steps
    tau = tokens / max(1, steps)
    print(f"[eval] dense N={args.budget}: tau {tau:.3f} ({tokens} tokens, {steps} forwards)",
          file=sys.stderr)

    cost = draft_step_cost(target, drafter, chat_ids(tok, prompts[0]), args.topk, args.depth)
    print(f"[eval] cost: {json.dumps({k: round(v, 3) for k, v in cost.items()})}",
          file=sys.stderr)
    result = {"head": str(args.head), "prompts": len(prompts), "max_new_tokens":
              args.max_new_tokens, "threads": args.threads,
              "first_step_agreement": agreement[0], "agreement_per_step": agreement,
              "draft_vocab_coverage": coverage,
              "dense_tree": {"budget": args.budget, "topk": args.topk, "depth": args.depth,
                             "tau": tau, "tokens": tokens, "target_forwards": steps},
              "cost": cost}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
