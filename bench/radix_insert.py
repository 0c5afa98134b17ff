"""Benchmark: what a radix-cache insert costs SGLang's scheduler thread with the radix feed on
(not a test).

Through SGLang's default prefix cache (``UnifiedRadixCache``, FULL component, Rust tree core,
real CPU pools, plain keys) and the feed's hook, with the GRAFT worker's retriever (the native
one, its shared corpus first filled with 256k tokens of other text so its tables are large):

* ``8k``: one insert of an 8192-token sequence the cache does not hold (a prompt's prefill);
* ``32k_chunked``: a 32768-token prompt prefilled in 4096-token chunks, i.e. eight inserts of
  the growing prefix (each adds 4096 tokens), summed.

Each is timed as the whole ``insert`` call (SGLang's insert plus the feed's hook), with the
queued indexing applied between repetitions. Also reported (``details``): the insert without
the feed (the cache's own share), the native indexing time (insert plus an immediate
``settle``: what the scheduler waits if its next retrieval call came at once; it normally
overlaps the next forward), and the same inserts with the Python retriever (synchronous).
Tokens: a real token stream (Python stdlib sources, ``bench.tree_build.token_stream``). Medians
over the repetitions, one thread. Writes ``bench/results/radix_insert.json`` and, if
``bench/results/step_overhead.json`` exists, its ``radix_insert_ms`` entry.

    python -m bench.radix_insert [--reps 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import torch

from bench.tree_build import token_stream
from graft_sglang.plugin import radix_feed
from graft_sglang.plugin.radix_feed import RadixFeed
from graft_sglang.retrieval.native import NativeSuffixRetriever
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever

RESULTS = Path(__file__).parent / "results"
FILL, SHORT, LONG, CHUNK = 1 << 18, 8192, 32768, 4096


def default_cache(size: int):
    """SGLang's default prefix cache as a server without hybrid layers builds it."""
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
    from sglang.srt.mem_cache.unified_cache.components.base import ComponentType
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

    kv = MHATokenToKVPool(size=size, page_size=1, dtype=torch.bfloat16, head_num=1, head_dim=8,
                          layer_num=1, device="cpu", enable_memory_saver=False)
    alloc = TokenToKVPoolAllocator(size=size, dtype=torch.bfloat16, device="cpu", kvcache=kv,
                                   need_sort=False)
    pool = ReqToTokenPool(size=4, max_context_len=LONG, device="cpu", enable_memory_saver=False)
    return UnifiedRadixCache(CacheInitParams(
        disable=False, req_to_token_pool=pool, token_to_kv_pool_allocator=alloc, page_size=1,
        tree_components=(ComponentType.FULL,))), alloc


class Inserts:
    """Inserts sequences into a fresh default cache (reset once full) as SGLang's checkpoint
    does: the request's tokens as a key, its KV slots as the value."""

    def __init__(self) -> None:
        self.cache, self.alloc = default_cache(4 * LONG)

    def __call__(self, tokens: array) -> float:
        """Inserts ``tokens``; returns the insert call's time in ms."""
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams
        from sglang.srt.mem_cache.radix_cache import RadixKey

        if self.alloc.available_size() < len(tokens):
            self.cache.reset()
            self.alloc.clear()
        key, value = RadixKey(tokens), self.alloc.alloc(len(tokens))
        start = time.perf_counter()
        self.cache.insert(InsertParams(key=key, value=value))
        return (time.perf_counter() - start) * 1e3


def sequences(stream: list[int], length: int, reps: int) -> list[array]:
    """``reps`` distinct sequences of ``length`` tokens cut from ``stream`` (a leading marker
    token makes each one new to the cache)."""
    step = max(1, (len(stream) - length) // reps)
    return [array("q", [50_000 + i, *stream[i * step : i * step + length - 1]])
            for i in range(reps)]


def measure(feed: RadixFeed | None, stream: list[int], reps: int,
            after: Callable[[], None]) -> dict[str, float]:
    """Median ms of the 8k insert and of the chunked 32k prompt (``after``: run after each
    insert, untimed unless ``settle`` below)."""
    inserts = Inserts()
    if feed is not None:
        feed.activate()
    try:
        short = []
        for seq in sequences(stream, SHORT, reps):
            short.append(inserts(seq))
            after()
        chunked = []
        for seq in sequences(stream, LONG, max(3, reps // 3)):
            total = 0.0
            for end in range(CHUNK, LONG + 1, CHUNK):
                total += inserts(seq[:end])
                after()
            chunked.append(total)
    finally:
        radix_feed._active = None
    return {"8k": round(statistics.median(short), 3),
            "32k_chunked": round(statistics.median(chunked), 3)}


def settled_measure(feed: RadixFeed, stream: list[int], reps: int) -> dict[str, float]:
    """Insert plus an immediate wait for the native indexing, in ms (medians)."""
    inserts = Inserts()
    feed.activate()
    try:
        def timed(seq: array) -> float:
            start = time.perf_counter()
            inserts(seq)
            feed.retriever.settle()
            return (time.perf_counter() - start) * 1e3

        short = [timed(seq) for seq in sequences(stream, SHORT, reps)]
        chunked = [sum(timed(seq[:end]) for end in range(CHUNK, LONG + 1, CHUNK))
                   for seq in sequences(stream, LONG, max(3, reps // 3))]
    finally:
        radix_feed._active = None
    return {"8k": round(statistics.median(short), 3),
            "32k_chunked": round(statistics.median(chunked), 3)}


def filled(retriever: SuffixRetriever | NativeSuffixRetriever, stream: list[int]) -> None:
    """The shared corpus holds FILL tokens of other text (documents of 2048 tokens)."""
    text = array("q", stream)
    for start in range(0, FILL, 2048):
        retriever.add_corpus(text[start % (len(text) - 2048):][:2048], ("other", None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=RESULTS / "radix_insert.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sglang.srt.plugins import load_plugins

    load_plugins()  # applies the feed's cache hooks
    stream = token_stream(LONG * 4)
    config = SuffixConfig()

    native = NativeSuffixRetriever(config)
    filled(native, stream)
    native.settle()
    cache_only = measure(None, stream, args.reps, lambda: None)
    feed = RadixFeed(native)
    with_feed = measure(feed, stream, args.reps, native.settle)
    indexed = settled_measure(feed, stream, args.reps)
    python = SuffixRetriever(config)
    filled(python, stream)
    with_python = measure(RadixFeed(python), stream, max(3, args.reps // 3), lambda: None)

    result = {**with_feed, "details": {
        "cache_insert_only_ms": cache_only,
        "feed_share_ms": {k: round(with_feed[k] - cache_only[k], 3) for k in cache_only},
        "native_insert_then_settle_ms": indexed,
        "python_retriever_insert_ms": with_python,
        "meta": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "threads": 1, "reps": args.reps, "corpus_fill_tokens": FILL,
                 "load_average_1min": round(os.getloadavg()[0], 2),
                 "cache": "UnifiedRadixCache, FULL, rust tree core, page 1, plain keys",
                 "tokens": "Python stdlib sources, embedded model's tokenizer"}}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    overhead = RESULTS / "step_overhead.json"
    if overhead.is_file():  # bench.step_overhead keeps this entry when it rewrites the file
        data = json.loads(overhead.read_text())
        data["radix_insert_ms"] = {k: with_feed[k] for k in ("8k", "32k_chunked")}
        overhead.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
