"""Micro-benchmark: one decoding step's suffix retrieval, Python vs native (not a test).

For bs in {1, 16, 64} and N in {16, 32, 64}, with the plugin's default plan and builder
settings (``GraftSettings``: a trie of N - 1 nodes below the root, one kept draft leaf with N / 4
more): each request decodes through a real token stream (Python stdlib sources tokenized with
the embedded model's tokenizer, as in ``bench.tree_build``) from its own point, with a 512-token
prompt and a shared corpus of four 2000-token documents of the same stream. Every step drafts
an EAGLE-shaped tree (random draft distributions), then

* python: ``SuffixRetriever.retrieve_packed`` (draft paths, one ``propose`` per query,
  ``pack_retrieved``);
* native: one ``NativeSuffixRetriever.retrieve_packed`` (``native_call``) on the same anchors
  (``step.draft_anchors``, device ops, timed apart as ``anchors``);

checks that both give identical tensors, and commits 1-4 true tokens per request to both
(timed). Also timed: the PyTorch reference builder on the step's candidates (today's other step
cost, for the issue's "step >= 4x cheaper" bar). Draft tokens are drawn among the first 2048
ids. Medians per step, one thread. Then the memory of a shared corpus of 50k tokens (code, and
random tokens: every key distinct, the worst case), Python (tracemalloc) vs native (its arrays).
Prints tables and writes ``bench/results/retrieval_native.json``.

    python -m bench.retrieval_native [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
import tracemalloc
from pathlib import Path

import torch

from bench.tree_build import SHAPES, token_stream
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.retrieval.native import NativeSuffixRetriever
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever
from graft_sglang.step import draft_anchors
from graft_sglang.tree.builder import build_graft_tree
from tests.random_inputs import eagle_draft

PROMPT, DOCS, DOC_LEN = 512, 4, 2000
MEMORY_TOKENS = 50_000
DRAFT_VOCAB = 2048  # draft tokens among the tokenizer's first (frequent) ids: cheap to draw


def run(bs: int, n: int, steps: int, stream: list[int]) -> dict:
    topk, depth = SHAPES[n]
    settings = GraftSettings()
    recipe = settings.recipe(n)
    config, plan = recipe.config, recipe.plan
    python, native = SuffixRetriever(settings.suffix_config()), NativeSuffixRetriever(
        settings.suffix_config())
    gen = torch.Generator().manual_seed(n * 100 + bs)
    for d in range(DOCS):
        doc = stream[d * DOC_LEN : (d + 1) * DOC_LEN]
        python.add_corpus(doc)
        native.add_corpus(doc)
    span = len(stream) - PROMPT - steps * 4
    pos = [PROMPT + (b * 997) % span for b in range(bs)]
    rids = [f"r{b}" for b in range(bs)]
    for rid, p in zip(rids, pos, strict=True):
        python.start_request(rid, stream[p - PROMPT : p])
        native.start_request(rid, stream[p - PROMPT : p])
    t: dict[str, list[float]] = {name: [] for name in (
        "python", "native", "anchors", "py_commit", "nat_commit", "build")}
    for _ in range(steps):
        draft = eagle_draft(gen, bs, topk, depth, DRAFT_VOCAB)
        roots = torch.tensor([stream[p - 1] for p in pos])
        t0 = time.perf_counter()
        anchors = draft_anchors(draft, config, plan.draft_anchors)
        t1 = time.perf_counter()
        want = python.retrieve_packed(rids, anchors, draft.tokens, draft.parents,
                                      plan.root_nodes, plan.anchor_nodes, plan.max_slots)
        t2 = time.perf_counter()
        got = native.retrieve_packed(rids, anchors, draft.tokens, draft.parents,
                                     plan.root_nodes, plan.anchor_nodes, plan.max_slots)
        t3 = time.perf_counter()
        for name in ("tokens", "parents", "anchors", "path_probs", "valid"):
            if not torch.equal(getattr(want, name), getattr(got, name)):
                raise AssertionError(f"native and Python retrieval differ in {name}")
        build_graft_tree(roots, torch.tensor(pos) - 1, draft, want, config)
        t4 = time.perf_counter()
        commits = [stream[p : p + 1 + p % 4] for p in pos]
        for rid, c in zip(rids, commits, strict=True):
            python.extend_request(rid, c)
        t5 = time.perf_counter()
        for rid, c in zip(rids, commits, strict=True):
            native.extend_request(rid, c)
        t6 = time.perf_counter()
        pos = [p + len(c) for p, c in zip(pos, commits, strict=True)]
        for name, dt in (("anchors", t1 - t0), ("python", t2 - t1), ("native", t3 - t2),
                         ("build", t4 - t3), ("py_commit", t5 - t4), ("nat_commit", t6 - t5)):
            t[name].append(dt)

    def us(name: str) -> float:
        return round(statistics.median(t[name]) * 1e6, 1)

    native_total = round(us("anchors") + us("native"), 1)
    return {"bs": bs, "budget": n, "draft_candidates": draft.num_candidates,
            "max_slots": plan.max_slots, "python_retrieve_us": us("python"),
            "anchors_us": us("anchors"), "native_call_us": us("native"),
            "native_retrieve_us": native_total,
            "speedup": round(us("python") / native_total, 1),
            "call_speedup": round(us("python") / us("native"), 1),
            "python_commit_us": us("py_commit"), "native_commit_us": us("nat_commit"),
            "reference_build_us": us("build")}


def index_memory(name: str, text: list[int]) -> dict:
    """Bytes per token of a shared corpus holding ``text`` (2000-token documents, no
    eviction): the Python index's allocations (tracemalloc) and the native index's arrays."""
    config = SuffixConfig(shared_capacity=1 << 20)
    native = NativeSuffixRetriever(config)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    python = SuffixRetriever(config)
    for i in range(0, len(text), DOC_LEN):
        python.add_corpus(text[i : i + DOC_LEN])
    python_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    for i in range(0, len(text), DOC_LEN):
        native.add_corpus(text[i : i + DOC_LEN])
    return {"text": name, "tokens": len(text),
            "python_bytes_per_token": round(python_bytes / len(text), 1),
            "native_bytes_per_token": round(native._native.shared_memory_bytes / len(text), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/retrieval_native.json")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    torch.set_num_threads(1)
    stream = token_stream(DOCS * DOC_LEN + 20_000)
    rows = []
    print(f"{'bs':>3} {'N':>3} {'python us':>10} {'anchors':>8} {'native call':>12} "
          f"{'x (call)':>9} {'commit py/nat':>14} {'ref build':>10}")
    run(1, 16, 2, stream)  # warm-up (and the native build, once per machine)
    for bs in (1, 16, 64):
        for n in (16, 32, 64):
            row = run(bs, n, args.steps, stream)
            rows.append(row)
            print(f"{bs:>3} {n:>3} {row['python_retrieve_us']:>10} {row['anchors_us']:>8} "
                  f"{row['native_call_us']:>12} {row['call_speedup']:>9} "
                  f"{row['python_commit_us']:>6}/{row['native_commit_us']:<7} "
                  f"{row['reference_build_us']:>10}", flush=True)
    rng = random.Random(0)
    memory = [index_memory(name, text) for name, text in (
        ("code", stream[:MEMORY_TOKENS]),
        ("random", [rng.randrange(49152) for _ in range(MEMORY_TOKENS)]))]
    for m in memory:
        print(f"shared corpus of {m['tokens']} {m['text']} tokens: python "
              f"{m['python_bytes_per_token']} B/token, native {m['native_bytes_per_token']}")
    meta = {"cpu": platform.processor() or platform.machine(), "threads": 1,
            "torch": torch.__version__, "steps": args.steps, "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "plan": "GraftSettings defaults: root N - 1, 1 draft anchor of N / 4"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows, "memory": memory},
                                         indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
