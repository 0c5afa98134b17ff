"""Retrieval sources compared on a real token stream (not a test).

Simulates retrieval-only speculative decoding over real text (Python stdlib sources tokenized
with the embedded model's tokenizer): each step a source proposes at most N tokens below the
current token, verification is perfect (the true stream), the step commits the matched prefix
plus one token, and the source is updated. Reports tokens per step (tau), first-token hit rate,
and lookup + update time per step, and writes ``bench/results/retrieval.json``.

Sources: our ``SuffixRetriever``; a plain hash n-gram table (longest of 4/3/2/1-gram, most
recent occurrence, one chain); SGLang's ``NgramCorpus`` (C++, JIT-built with g++ through
tvm-ffi; fed as SGLang's NGRAM worker feeds it: the last 18 tokens after every step; also with
the prompt inserted); the paper's successor table with rows from observed next-token counts.

    python -m bench.retrieval [--tokens 6000] [--budget 16]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from bench.tree_build import token_stream
from graft_sglang.retrieval.successor import SuccessorTable
from graft_sglang.retrieval.suffix import SuffixRetriever


def walk(tokens: list[int], parents: list[int], truth: list[int]) -> int:
    """Length of the longest root-to-node path that equals a prefix of ``truth``."""
    node, depth = -1, 0
    while depth < len(truth):
        nxt = [i for i, p in enumerate(parents) if p == node and tokens[i] == truth[depth]]
        if not nxt:
            break
        node, depth = nxt[0], depth + 1
    return depth


class SuffixSource:
    name = "suffix (ours)"

    def __init__(self, prompt: list[int], budget: int) -> None:
        self.r, self.budget = SuffixRetriever(), budget
        self.r.start_request("r", prompt)

    def propose(self, context: list[int]) -> tuple[list[int], list[int]]:
        c = self.r.propose("r", (), self.budget)
        return c.tokens, c.parents

    def commit(self, context: list[int], new: list[int]) -> None:
        self.r.extend_request("r", new)


class HashNgramSource:
    name = "hash n-gram (plain)"

    def __init__(self, prompt: list[int], budget: int) -> None:
        self.budget, self.text = budget, []
        self.table: dict[tuple[int, ...], int] = {}
        self.commit([], prompt)

    def propose(self, context: list[int]) -> tuple[list[int], list[int]]:
        for n in (4, 3, 2, 1):
            pos = self.table.get(tuple(context[-n:]))
            if pos is not None:
                chain = self.text[pos + 1 : pos + 1 + self.budget]
                return chain, list(range(-1, len(chain) - 1))
        return [], []

    def commit(self, context: list[int], new: list[int]) -> None:
        for t in new:
            self.text.append(t)
            end = len(self.text) - 1
            for n in (1, 2, 3, 4):
                if end - n >= 0:  # index the n-gram ending before this token
                    self.table[tuple(self.text[end - n : end])] = end - 1


class NgramCorpusSource:
    def __init__(self, prompt: list[int], budget: int, insert_prompt: bool) -> None:
        from sglang.srt.speculative.cpp_ngram.ngram_corpus import NgramCorpus

        self.name = "sglang NgramCorpus" + (" +prompt" if insert_prompt else "")
        self.corpus = NgramCorpus(draft_token_num=budget + 1, max_bfs_breadth=8)
        self.budget = budget
        if insert_prompt:
            self.corpus.batch_put([prompt[i : i + 18] for i in range(0, len(prompt), 9)])
        self.total = len(prompt)

    def propose(self, context: list[int]) -> tuple[list[int], list[int]]:
        self.corpus.synchronize()
        n = self.budget + 1
        toks, mask = self.corpus.batch_get(["r"], [context[-18:]], [len(context)])
        toks, mask = list(toks), [list(mask[i * n : (i + 1) * n]) for i in range(n)]
        parents = [max((j for j in range(i) if mask[i][j]), default=0) - 1 for i in range(1, n)]
        return toks[1:], parents

    def commit(self, context: list[int], new: list[int]) -> None:
        self.corpus.batch_put([(context + new)[-18:]])


class SuccessorSource:
    name = "successor table (counts)"

    def __init__(self, prompt: list[int], budget: int) -> None:
        self.table = SuccessorTable(vocab_size=49152, k=8)
        self.counts: dict[int, Counter] = defaultdict(Counter)
        self.widths = (8, 4, 2, 1, 1)[: max(1, budget // 4)]
        self.commit([], prompt)

    def propose(self, context: list[int]) -> tuple[list[int], list[int]]:
        cand = self.table.propose(torch.tensor([context[-1]]), self.widths)
        v = cand.valid[0]
        keep = v.nonzero().flatten().tolist()
        slot = {j: i for i, j in enumerate(keep)}
        tokens = [int(cand.tokens[0, j]) for j in keep]
        parents = [slot[int(cand.parents[0, j])] if int(cand.parents[0, j]) >= 0 else -1
                   for j in keep]
        return tokens, parents

    def commit(self, context: list[int], new: list[int]) -> None:
        seq = context[-1:] + new
        touched = set()
        for a, b in itertools.pairwise(seq):
            self.counts[a][b] += 1
            touched.add(a)
        for a in sorted(touched):
            top = self.counts[a].most_common(8)
            total = sum(self.counts[a].values())
            ids = [t for t, _ in top] + [-1] * (8 - len(top))
            probs = [c / total for _, c in top] + [0.0] * (8 - len(top))
            self.table.update(torch.tensor([a]), torch.tensor([ids]), torch.tensor([probs]))


def simulate(source, stream: list[int], prompt_len: int, end: int) -> dict:
    pos, steps, hits, t_lookup, t_update = prompt_len, 0, 0, 0.0, 0.0
    while pos < end:
        context = stream[:pos]
        t0 = time.perf_counter()
        tokens, parents = source.propose(context)
        t1 = time.perf_counter()
        matched = walk(tokens, parents, stream[pos : pos + 64])
        hits += matched > 0
        new = stream[pos : pos + matched + 1]
        source.commit(context, new)
        t_update += time.perf_counter() - t1
        t_lookup += t1 - t0
        pos += len(new)
        steps += 1
    return {"source": source.name, "steps": steps, "tau": round((end - prompt_len) / steps, 3),
            "first_token_hit_rate": round(hits / steps, 3),
            "lookup_us": round(t_lookup / steps * 1e6, 1),
            "update_us": round(t_update / steps * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--out", default="bench/results/retrieval.json")
    args = parser.parse_args()
    if args.tokens < 1000 or args.budget < 1:
        parser.error("--tokens must be >= 1000 and --budget >= 1")
    torch.set_num_threads(1)
    stream = token_stream(args.tokens)[: args.tokens]
    prompt_len = len(stream) // 3
    prompt = stream[:prompt_len]
    factories = [
        lambda: SuffixSource(prompt, args.budget),
        lambda: HashNgramSource(prompt, args.budget),
        lambda: SuccessorSource(prompt, args.budget),
        lambda: NgramCorpusSource(prompt, args.budget, insert_prompt=False),
        lambda: NgramCorpusSource(prompt, args.budget, insert_prompt=True),
    ]
    rows = []
    print(f"{len(stream)} tokens, prompt {prompt_len}, budget {args.budget}")
    print(f"{'source':<30} {'tau':>6} {'hit':>6} {'lookup us':>10} {'update us':>10}")
    for make in factories:
        try:
            row = simulate(make(), stream, prompt_len, len(stream))
        except Exception as exc:  # an optional baseline that cannot build here is reported
            print(f"skipped a source: {type(exc).__name__}: {exc}")
            continue
        rows.append(row)
        print(f"{row['source']:<30} {row['tau']:>6} {row['first_token_hit_rate']:>6} "
              f"{row['lookup_us']:>10} {row['update_us']:>10}", flush=True)
    Path(args.out).write_text(json.dumps({"tokens": len(stream), "prompt": prompt_len,
                                          "budget": args.budget, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
