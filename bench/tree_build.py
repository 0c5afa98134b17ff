"""Micro-benchmark: retrieval + tree build per decoding step on CPU (not a test).

For bs in {1, 8, 32} and N in {16, 32, 64}: each request decodes through a real token stream (a
Python stdlib source tokenized with the embedded model's tokenizer); every step drafts an
EAGLE-shaped candidate tree (random draft distributions: the draft model's cost is not measured
here), retrieves from the suffix index (root + one kept draft leaf), packs, builds the Graft tree,
and commits the true next tokens to the index. Prints microseconds per step and writes
``bench/results/tree_build.json``.

    python -m bench.tree_build [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from graft_sglang.retrieval.base import RetrievalPlan
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.step import draft_anchors
from graft_sglang.tree.builder import GraftConfig, build_graft_tree
from tests.random_inputs import eagle_draft

# (budget N, draft topk, draft depth): EAGLE trees that can fill N.
SHAPES = {16: (4, 4), 32: (4, 6), 64: (8, 6)}


def token_stream(min_tokens: int) -> list[int]:
    import inspect
    import json as json_module

    from transformers import AutoTokenizer

    from graft_sglang.engine.model import DEFAULT_MODEL, cache_dir, load_model

    path = cache_dir() / "models" / DEFAULT_MODEL
    if not path.is_dir():
        load_model()  # converts the embedded GGUF once
    tok = AutoTokenizer.from_pretrained(str(path))
    ids: list[int] = []
    for module in (json_module, argparse, inspect):
        ids.extend(tok(Path(module.__file__).read_text())["input_ids"])
        if len(ids) >= min_tokens:
            break
    return ids


def run(bs: int, n: int, steps: int, stream: list[int]) -> dict:
    topk, depth = SHAPES[n]
    gen = torch.Generator().manual_seed(n * 100 + bs)
    config = GraftConfig(budget=n, threshold=0.05)
    retriever = SuffixRetriever()
    plan = RetrievalPlan(root_nodes=n // 2, draft_anchors=1, anchor_nodes=n // 8)
    # Request b starts decoding at a different point of the stream, with 512 tokens of prompt.
    starts = [512 + (b * 997) % (len(stream) - 512 - steps * 8) for b in range(bs)]
    rids = [f"r{b}" for b in range(bs)]
    for rid, s in zip(rids, starts, strict=True):
        retriever.start_request(rid, stream[s - 512 : s])
    pos = list(starts)
    t_retrieve = t_build = t_commit = 0.0
    for _ in range(steps):
        draft = eagle_draft(gen, bs, topk, depth, 49152)
        roots = torch.tensor([stream[p - 1] for p in pos])
        seq_lens = torch.tensor(pos) - 1
        t0 = time.perf_counter()
        anchors = draft_anchors(draft, config, plan.draft_anchors)
        retrieved = retriever.retrieve_packed(rids, anchors, draft.tokens, draft.parents,
                                              plan.root_nodes, plan.anchor_nodes,
                                              plan.max_slots)
        t1 = time.perf_counter()
        build_graft_tree(roots, seq_lens, draft, retrieved, config)
        t2 = time.perf_counter()
        for b, rid in enumerate(rids):  # commit 1-4 true tokens per request
            k = 1 + (pos[b] % 4)
            retriever.extend_request(rid, stream[pos[b] : pos[b] + k])
            pos[b] += k
        t_commit += time.perf_counter() - t2
        t_retrieve += t1 - t0
        t_build += t2 - t1
    us = 1e6 / steps
    return {
        "bs": bs, "budget": n, "draft_candidates": topk + (depth - 1) * topk * topk,
        "retrieve_us": round(t_retrieve * us, 1), "build_us": round(t_build * us, 1),
        "commit_us": round(t_commit * us, 1),
        "total_us": round((t_retrieve + t_build + t_commit) * us, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/tree_build.json")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    torch.set_num_threads(args.threads)
    stream = token_stream(20_000)
    rows = []
    print(f"{'bs':>3} {'N':>3} {'M':>4} {'retrieve':>10} {'build':>10} {'commit':>9} "
          f"{'total us/step':>14}")
    for bs in (1, 8, 32):
        for n in (16, 32, 64):
            run(bs, n, 2, stream)  # warm-up
            row = run(bs, n, args.steps, stream)
            rows.append(row)
            print(f"{bs:>3} {n:>3} {row['draft_candidates']:>4} {row['retrieve_us']:>10} "
                  f"{row['build_us']:>10} {row['commit_us']:>9} {row['total_us']:>14}",
                  flush=True)
    meta = {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "torch": torch.__version__, "steps": args.steps}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
