"""Retrieval sources compared on real token streams (not a test).

Simulates retrieval-only speculative decoding: the first third of a stream is the prompt; each
step a source proposes at most ``--budget`` tokens below the current token, verification is
perfect (the true stream), the step commits the matched prefix plus one token, and the source
is updated with the committed tokens. Reports tokens per step (tau), first-token hit rate (a
depth-1 proposal equals the true next token), and lookup and update time per step. Streams: the
embedded model's tokenizer over Python stdlib sources (``code``) and the GPL-3 text of
/usr/share/common-licenses (``prose``, if present).

Sources:
* our ``SuffixRetriever`` (the request's prompt + committed text);
* a plain hash n-gram table (longest of 4/3/2/1-gram, most recent occurrence, one chain);
* SGLang's ``NgramCorpus`` (C++, JIT-built with g++ through tvm-ffi), fed as SGLang's NGRAM
  worker feeds it (the last 18 tokens after every step), without and with the prompt inserted;
* Arctic Inference's suffix tree (``SuffixDecodingCache``, SuffixDecoding as in vLLM: prompt in
  a per-request tree, responses in the global one; tree speculation, depth 24; vLLM's limits
  spec factor 1 and min token prob 0.1, and "unlimited": the budget only), if
  ``arctic_inference.suffix_decoding`` imports. Its PyPI release is an sdist whose build needs
  CUDA custom ops; the suffix tree alone builds in ~10 s from that sdist with nanobind 2.9.2:
  ``g++ -O2 -std=c++20 -shared -fPIC -fvisibility=hidden -I<python include> -I<nanobind>/include
  -I<nanobind>/ext/robin_map/include csrc/suffix_decoding/{bindings,suffix_tree}.cc
  <nanobind>/src/nb_combined.cpp -o arctic_inference/suffix_decoding/_C<EXT_SUFFIX>``, then put
  the sdist's ``arctic_inference/suffix_decoding/{__init__,cache}.py`` and an empty
  ``arctic_inference/__init__.py`` beside it on ``PYTHONPATH``;
* the paper's ``SuccessorTable`` fed with the true next tokens (row = top-k successors by count
  so far), and with ``--target-logits`` also fed with the embedded model's top-k (the paper's
  source; teacher-forced logits, computed once before the runs). Either way, a step updates the
  rows of the tokens the target has verified: the old root and the accepted ones (the new root's
  row waits for the next step, as in a real server). Timed: ``table.propose`` and
  ``table.update`` only; the bookkeeping that stands in for the target is not.

For sources that give probabilities (ours and the successor table) the run also records their
calibration: per decile of a node's path probability, the share of nodes whose path is a prefix
of the true continuation (what the tree builder's ranking assumes).

Times per step are medians (robust to the preemption of a shared machine; means are recorded
too). Lookup times cover the source's own work up to a proposal (SGLang's NgramCorpus: including its
``synchronize``); converting a proposal for scoring is not timed. A second table times the
batched sources per step for bs in {1, 8, 32} with ``--budget`` slots per request.

    python -m bench.retrieval [--tokens 6000] [--budget 16] [--target-logits]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from bench.tree_build import token_stream
from graft_sglang.retrieval.successor import PAPER_WIDTHS, SuccessorTable
from graft_sglang.retrieval.suffix import SuffixRetriever

PROSE_FILE = Path("/usr/share/common-licenses/GPL-3")
NGRAM_WINDOW = 18  # SGLang's NGRAM worker inserts / matches the last 18 tokens


def walk(tokens: list[int], parents: list[int], truth: list[int]) -> int:
    """Length of the longest root-to-node path that equals a prefix of ``truth``."""
    node, depth = -1, 0
    while depth < len(truth):
        nxt = [i for i, p in enumerate(parents) if p == node and tokens[i] == truth[depth]]
        if not nxt:
            break
        node, depth = nxt[0], depth + 1
    return depth


def successor_widths(budget: int) -> tuple[int, ...]:
    """The paper's 52-node template scaled to ``budget`` nodes (the remainder on level 0)."""
    widths = [max(1, round(w * budget / sum(PAPER_WIDTHS))) for w in PAPER_WIDTHS]
    while sum(widths) > budget and len(widths) > 1:
        widths.pop()
    widths[0] += budget - sum(widths)
    return tuple(widths)


class SuffixSource:
    name = "suffix (ours)"

    def __init__(self, stream: list[int], prompt_len: int, budget: int) -> None:
        self.r, self.budget = SuffixRetriever(), budget
        self.r.start_request("r", stream[:prompt_len])

    def propose(self, context: list[int]):
        return self.r.propose("r", (), self.budget)

    def tree(self, raw) -> tuple[list[int], list[int], list[float]]:
        path: list[float] = []
        for par, p in zip(raw.parents, raw.probs, strict=True):
            path.append(p * (path[par] if par >= 0 else 1.0))
        return raw.tokens, raw.parents, path

    def commit(self, context: list[int], new: list[int]) -> None:
        self.r.extend_request("r", new)


class HashNgramSource:
    name = "hash n-gram (plain)"

    def __init__(self, stream: list[int], prompt_len: int, budget: int) -> None:
        self.budget, self.text = budget, []
        self.table: dict[tuple[int, ...], int] = {}
        self.commit([], stream[:prompt_len])

    def propose(self, context: list[int]):
        for n in (4, 3, 2, 1):
            pos = self.table.get(tuple(context[-n:]))
            if pos is not None:
                return self.text[pos + 1 : pos + 1 + self.budget]
        return []

    def tree(self, raw) -> tuple[list[int], list[int], None]:
        return raw, list(range(-1, len(raw) - 1)), None

    def commit(self, context: list[int], new: list[int]) -> None:
        for t in new:
            self.text.append(t)
            end = len(self.text) - 1
            for n in (1, 2, 3, 4):
                if end - n >= 0:  # the n-gram ending just before this token is followed by it
                    self.table[tuple(self.text[end - n : end])] = end - 1


class NgramCorpusSource:
    def __init__(self, stream: list[int], prompt_len: int, budget: int,
                 insert_prompt: bool) -> None:
        from sglang.srt.speculative.cpp_ngram.ngram_corpus import NgramCorpus

        self.name = "sglang NgramCorpus" + (" +prompt" if insert_prompt else "")
        self.corpus = NgramCorpus(draft_token_num=budget + 1, max_bfs_breadth=8)
        self.n = budget + 1
        if insert_prompt:
            prompt = stream[:prompt_len]
            half = NGRAM_WINDOW // 2
            self.corpus.batch_put([prompt[i : i + NGRAM_WINDOW]
                                   for i in range(0, len(prompt), half)])

    def propose(self, context: list[int]):
        self.corpus.synchronize()
        return self.corpus.batch_get(["r"], [context[-NGRAM_WINDOW:]], [len(context)])

    def tree(self, raw) -> tuple[list[int], list[int], None]:
        n = self.n
        toks, flat = list(raw[0]), list(raw[1])
        mask = [flat[i * n : (i + 1) * n] for i in range(n)]
        # Node i's parent is its deepest visible earlier node; node 0 is the root.
        parents = [max((j for j in range(i) if mask[i][j]), default=0) - 1 for i in range(1, n)]
        return toks[1:], parents, None

    def commit(self, context: list[int], new: list[int]) -> None:
        self.corpus.batch_put([(context + new)[-NGRAM_WINDOW:]])


class ArcticSuffixSource:
    def __init__(self, stream: list[int], prompt_len: int, budget: int,
                 spec_factor: float = 1.0, min_token_prob: float = 0.1) -> None:
        from arctic_inference.suffix_decoding import SuffixDecodingCache

        self.name = "arctic suffix tree" + ("" if spec_factor == 1.0 else " (unlimited)")
        self.cache = SuffixDecodingCache(max_tree_depth=24)
        self.cache.start_request("r", stream[:prompt_len])
        self.budget, self.spec_factor, self.min_token_prob = budget, spec_factor, min_token_prob

    def propose(self, context: list[int]):
        return self.cache.speculate("r", context[-24:], max_spec_tokens=self.budget,
                                    max_spec_factor=self.spec_factor,
                                    min_token_prob=self.min_token_prob, use_tree_spec=True)

    def tree(self, raw) -> tuple[list[int], list[int], None]:
        return list(raw.token_ids), list(raw.parents), None

    def commit(self, context: list[int], new: list[int]) -> None:
        self.cache.add_active_response("r", new)


def count_rows(stream: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position i: the top-k successors of ``stream[i]`` by count over pairs up to i+1."""
    counts: dict[int, Counter] = defaultdict(Counter)
    ids = torch.full((len(stream), k), -1, dtype=torch.int64)
    probs = torch.zeros(len(stream), k)
    for i in range(len(stream) - 1):
        row = counts[stream[i]]
        row[stream[i + 1]] += 1
        total = sum(row.values())
        for r, (t, c) in enumerate(row.most_common(k)):
            ids[i, r], probs[i, r] = t, c / total
    return ids, probs


def logit_rows(stream: list[int], k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per position i: the embedded model's top-k next tokens after ``stream[: i + 1]``; and
    the model's vocabulary size."""
    from graft_sglang.engine.model import load_model

    loaded = load_model()
    ids, probs = [], []
    with torch.no_grad():
        cache = None
        for s in range(0, len(stream), 512):
            chunk = torch.tensor([stream[s : s + 512]])
            out = loaded.model(input_ids=chunk, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            p, i = torch.topk(torch.softmax(out.logits[0].float(), dim=-1), k, dim=-1)
            ids.append(i)
            probs.append(p)
    return torch.cat(ids), torch.cat(probs), loaded.model.config.vocab_size


class SuccessorSource:
    def __init__(self, stream: list[int], prompt_len: int, budget: int, name: str,
                 rows: tuple[torch.Tensor, torch.Tensor], vocab: int) -> None:
        self.name = name
        self.stream = torch.tensor(stream)
        self.ids, self.probs = rows
        self.table = SuccessorTable(vocab, k=self.ids.shape[1])
        self.widths = successor_widths(budget)
        # Prefill: the target has seen every prompt token but the last (the first root).
        self._update(0, prompt_len - 1)

    def _update(self, first: int, last: int) -> None:
        self.table.update(self.stream[first:last], self.ids[first:last], self.probs[first:last])

    def propose(self, context: list[int]):
        return self.table.propose(self.stream[len(context) - 1 : len(context)], self.widths)

    def tree(self, raw) -> tuple[list[int], list[int], list[float]]:
        keep = raw.valid[0].nonzero().flatten().tolist()
        slot = {j: i for i, j in enumerate(keep)}
        parents, tokens = raw.parents[0].tolist(), raw.tokens[0].tolist()
        probs = raw.path_probs[0].tolist()
        return ([tokens[j] for j in keep],
                [slot[parents[j]] if parents[j] >= 0 else -1 for j in keep],
                [probs[j] for j in keep])

    def commit(self, context: list[int], new: list[int]) -> None:
        # Verified this step: the old root and the accepted tokens (not the new root).
        self._update(len(context) - 1, len(context) + len(new) - 1)


def simulate(source, stream: list[int], prompt_len: int) -> dict:
    pos, steps, hits = prompt_len, 0, 0
    t_lookup: list[float] = []
    t_update: list[float] = []
    # Calibration of path probabilities: per decile, [nodes, sum predicted, nodes on the truth].
    bins = [[0, 0.0, 0] for _ in range(10)]
    while pos < len(stream):
        context = stream[:pos]
        t0 = time.perf_counter()
        raw = source.propose(context)
        t_lookup.append(time.perf_counter() - t0)
        tokens, parents, path_probs = source.tree(raw)
        truth = stream[pos : pos + 64]
        hits += any(p == -1 and t == truth[0] for t, p in zip(tokens, parents, strict=True))
        if path_probs is not None:
            depth: list[int] = []
            on_truth: list[bool] = []
            for t, par, q in zip(tokens, parents, path_probs, strict=True):
                depth.append(depth[par] + 1 if par >= 0 else 1)
                ok = (par < 0 or on_truth[par]) and depth[-1] <= len(truth) \
                    and t == truth[depth[-1] - 1]
                on_truth.append(ok)
                b = bins[min(int(q * 10), 9)]
                b[0], b[1], b[2] = b[0] + 1, b[1] + q, b[2] + ok
        new = stream[pos : pos + walk(tokens, parents, truth) + 1]
        t0 = time.perf_counter()
        source.commit(context, new)
        t_update.append(time.perf_counter() - t0)
        pos += len(new)
        steps += 1
    row = {"source": source.name, "steps": steps,
           "tau": round((len(stream) - prompt_len) / steps, 3),
           "first_token_hit_rate": round(hits / steps, 3),
           "lookup_us": round(statistics.median(t_lookup) * 1e6, 1),
           "update_us": round(statistics.median(t_update) * 1e6, 1),
           "lookup_mean_us": round(statistics.fmean(t_lookup) * 1e6, 1),
           "update_mean_us": round(statistics.fmean(t_update) * 1e6, 1)}
    if any(b[0] for b in bins):
        row["calibration"] = [{"bin": [i / 10, (i + 1) / 10], "nodes": n,
                               "predicted": round(q / n, 3), "observed": round(ok / n, 3)}
                              for i, (n, q, ok) in enumerate(bins) if n]
    return row


def batched_costs(stream: list[int], budget: int, vocab: int, repeats: int = 50) -> list[dict]:
    """Per-step lookup cost for a batch (median over ``repeats``): bs suffix proposals vs one
    batched successor walk."""
    rows = []
    ids, probs = count_rows(stream, 10)
    for bs in (1, 8, 32):
        retriever = SuffixRetriever()
        table = SuccessorTable(vocab, k=10)
        table.update(torch.tensor(stream[:-1]), ids[:-1], probs[:-1])
        starts = [len(stream) // 3 + 97 * b for b in range(bs)]
        for b, s in enumerate(starts):
            retriever.start_request(f"r{b}", stream[:s])
        roots = torch.tensor([stream[s - 1] for s in starts])
        widths = successor_widths(budget)
        t_suffix, t_table = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for b in range(bs):
                retriever.propose(f"r{b}", (), budget)
            t1 = time.perf_counter()
            table.propose(roots, widths)
            t_table.append(time.perf_counter() - t1)
            t_suffix.append(t1 - t0)
        rows.append({"bs": bs, "suffix_us": round(statistics.median(t_suffix) * 1e6, 1),
                     "successor_us": round(statistics.median(t_table) * 1e6, 1)})
    return rows


def prose_stream(max_tokens: int) -> list[int]:
    from transformers import AutoTokenizer

    from graft_sglang.engine.model import DEFAULT_MODEL, cache_dir

    tok = AutoTokenizer.from_pretrained(str(cache_dir() / "models" / DEFAULT_MODEL))
    return tok(PROSE_FILE.read_text())["input_ids"][:max_tokens]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=6000)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--target-logits", action="store_true",
                        help="also feed a successor table from the embedded model's logits")
    parser.add_argument("--out", default="bench/results/retrieval.json")
    args = parser.parse_args()
    if args.tokens < 1000 or not 1 <= args.budget <= sum(PAPER_WIDTHS):
        parser.error(f"--tokens must be >= 1000 and --budget in [1, {sum(PAPER_WIDTHS)}]")
    torch.set_num_threads(1)
    streams = {"code": token_stream(args.tokens)[: args.tokens]}
    if PROSE_FILE.is_file():
        streams["prose"] = prose_stream(args.tokens)
    vocab = 1 + max(max(s) for s in streams.values())
    result = {"budget": args.budget, "successor_widths": successor_widths(args.budget),
              "machine": platform.processor() or platform.machine(), "threads": 1,
              "streams": {}}
    header = f"{'source':<34} {'tau':>6} {'hit':>6} {'lookup us':>10} {'update us':>10}  (medians)"
    for name, stream in streams.items():
        prompt_len = len(stream) // 3

        def factories(stream=stream, prompt_len=prompt_len):
            b = args.budget
            yield lambda: SuffixSource(stream, prompt_len, b)
            yield lambda: HashNgramSource(stream, prompt_len, b)
            yield lambda: ArcticSuffixSource(stream, prompt_len, b)
            yield lambda: ArcticSuffixSource(stream, prompt_len, b, spec_factor=float(b),
                                             min_token_prob=0.0)
            yield lambda: SuccessorSource(stream, prompt_len, b, "successor (true next tokens)",
                                          count_rows(stream, 10), vocab)
            if args.target_logits:
                ids, probs, v = logit_rows(stream, 10)
                yield lambda: SuccessorSource(stream, prompt_len, b,
                                              "successor (target logits)", (ids, probs), v)
            yield lambda: NgramCorpusSource(stream, prompt_len, b, insert_prompt=False)
            yield lambda: NgramCorpusSource(stream, prompt_len, b, insert_prompt=True)

        print(f"\n{name}: {len(stream)} tokens, prompt {prompt_len}, budget {args.budget}")
        print(header)
        rows = []
        for make in factories():
            try:
                source = make()
            except Exception as exc:  # an optional baseline that cannot build here is reported
                print(f"skipped a source: {type(exc).__name__}: {exc}")
                continue
            row = simulate(source, stream, prompt_len)
            rows.append(row)
            print(f"{row['source']:<34} {row['tau']:>6} {row['first_token_hit_rate']:>6} "
                  f"{row['lookup_us']:>10} {row['update_us']:>10}", flush=True)
        result["streams"][name] = {"tokens": len(stream), "prompt": prompt_len, "rows": rows}
    print(f"\nbatched lookup per step (median), {args.budget} slots per request (code stream)")
    print(f"{'bs':>4} {'suffix us':>10} {'successor us':>13}")
    result["batched"] = batched_costs(streams["code"], args.budget, vocab)
    for row in result["batched"]:
        print(f"{row['bs']:>4} {row['suffix_us']:>10} {row['successor_us']:>13}")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
