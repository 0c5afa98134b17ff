"""The radix-cache feed, through SGLang's real RadixCache and its plugin hook registry."""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
from sglang.srt.plugins import load_plugins

from graft_sglang.plugin import radix_feed
from graft_sglang.plugin.radix_feed import RadixFeed
from graft_sglang.retrieval.suffix import SuffixRetriever


class CountingAllocator:
    """The token allocator the simulated cache frees evicted KV slots to."""

    device = "cpu"

    def __init__(self) -> None:
        self.freed = 0

    def free_segment(self, value: torch.Tensor, start_pos: int = 0) -> None:
        self.freed += len(value)


def insert(cache: RadixCache, tokens: list[int]) -> None:
    key = RadixKey(tokens)
    cache.insert(InsertParams(key=key, value=torch.arange(len(tokens))))


def test_cache_content_feeds_retrieval() -> None:
    load_plugins()  # installs the AFTER hooks on RadixCache.insert / evict
    retriever = SuffixRetriever()
    feed = RadixFeed(retriever)
    feed.activate()
    try:
        cache = RadixCache.create_simulated(mock_allocator=CountingAllocator())
        retriever.start_request("r", [50, 10, 11, 12])
        assert retriever.propose("r", (), 4).tokens == []
        insert(cache, [1, 2, 10, 11, 12, 13, 14])  # another request's text, now cached
        assert retriever.propose("r", (), 4).tokens[:2] == [13, 14]
        # A checkpoint extending the same request replaces its document.
        insert(cache, [1, 2, 10, 11, 12, 13, 14, 15])
        assert len(feed.documents) == 1 and feed.tokens == 8
        insert(cache, [7, 7, 7, 20, 21])
        assert feed.tokens == 13
        # Evict everything evictable: the corpus shrinks to what the cache still holds.
        cache.evict(EvictParams(num_tokens=100))
        assert cache.evictable_size() + cache.protected_size() == 0
        assert feed.tokens == 0 and not feed.documents
        assert retriever.propose("r", (), 4).tokens == []
    finally:
        radix_feed._active = None


def test_feed_alone_respects_cache_size() -> None:
    retriever = SuffixRetriever()
    feed = RadixFeed(retriever, max_documents=2)
    feed.on_insert((1, 2, 3))
    feed.on_insert((4, 5, 6, 7))
    feed.on_insert((8, 9))  # over max_documents: the oldest leaves
    assert list(feed.documents.values()) == [(4, 5, 6, 7), (8, 9)]
    feed.on_insert((4, 5))  # already inside a held document
    assert feed.tokens == 6
    feed.on_evict(cache_tokens=3)
    assert list(feed.documents.values()) == [(8, 9)]
