"""Mirror SGLang's radix cache into Graft's shared retrieval corpus.

What the prefix cache holds (finished and checkpointed requests' token sequences) is what Graft
can graft from, and the corpus never holds more tokens than the cache: SGLang's ``insert`` and
``evict`` of both the classic ``RadixCache`` and the default ``UnifiedRadixCache`` get AFTER
hooks (``HookRegistry``, no patch). An inserted sequence becomes a corpus document (a document
that it extends is replaced); after an eviction the oldest documents leave the corpus until it
is no larger than the cache (first in, first out, which approximates the cache's LRU).
Both prefix-anchored continuations (other requests with the same prefix) and suffix-anchored
ones (the same recent tokens anywhere) then come out of the suffix index.

Radix keys of multimodal requests carry image pad values (``>= vocab_size``, identities rather
than tokens): they never enter the corpus, so no retrieved continuation can hold one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from graft_sglang.retrieval.suffix import SuffixRetriever

CACHE_CLASSES = (
    "sglang.srt.mem_cache.radix_cache.RadixCache",
    "sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache",
)
_active: RadixFeed | None = None  # the feed of this process's GRAFT worker


def vocabulary_tokens(tokens: Iterable[int], vocab_size: int | None) -> tuple[int, ...]:
    """``tokens`` without the values outside ``[0, vocab_size)`` (e.g. multimodal pad values;
    None: all kept). O(len(tokens))."""
    if vocab_size is None:
        return tuple(int(t) for t in tokens)
    return tuple(int(t) for t in tokens if 0 <= t < vocab_size)


class RadixFeed:
    """Keeps ``retriever``'s shared corpus in step with one prefix cache (``vocab_size``: the
    target's vocabulary; tokens outside it are dropped from what the corpus receives)."""

    def __init__(self, retriever: SuffixRetriever, max_documents: int = 4096,
                 vocab_size: int | None = None) -> None:
        self.retriever = retriever
        self.max_documents = max_documents
        self.vocab_size = vocab_size
        self.documents: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # handle -> tokens
        self.tokens = 0

    def activate(self) -> None:
        """Make this feed the one the cache hooks of this process report to."""
        global _active
        _active = self

    def on_insert(self, key_tokens: Iterable[int]) -> None:
        """A cache insert of ``key_tokens`` (a radix key's raw tokens)."""
        tokens = vocabulary_tokens(key_tokens, self.vocab_size)
        if not tokens:
            return
        for handle, doc in list(self.documents.items()):
            if tokens[: len(doc)] == doc:  # the new sequence extends (or repeats) this one
                self._remove(handle)
            elif doc[: len(tokens)] == tokens:  # already held inside a longer document
                return
        handle = self.retriever.add_corpus(tokens)
        self.documents[handle] = tokens
        self.tokens += len(tokens)
        while len(self.documents) > self.max_documents:
            self._remove(next(iter(self.documents)))

    def on_evict(self, cache_tokens: int) -> None:
        while self.documents and self.tokens > cache_tokens:
            self._remove(next(iter(self.documents)))

    def _remove(self, handle: int) -> None:
        doc = self.documents.pop(handle)
        self.tokens -= len(doc)
        self.retriever.remove_corpus(handle)


def _cache_tokens(cache: Any) -> int:
    return int(cache.evictable_size()) + int(cache.protected_size())


def after_insert(result: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    params = args[0] if args else kwargs.get("params")
    if _active is not None and getattr(params, "key", None) is not None:
        _active.on_insert(params.key.raw_token_ids())  # raw tokens (bigram keys too), cut at limit
    return result


def after_evict(result: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    if _active is not None:
        _active.on_evict(_cache_tokens(cache))
    return result


def register_hooks() -> None:
    """AFTER hooks on ``insert`` / ``evict`` of SGLang's radix caches (called at plugin load)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for cls in CACHE_CLASSES:
        HookRegistry.register(f"{cls}.insert", after_insert, HookType.AFTER)
        HookRegistry.register(f"{cls}.evict", after_evict, HookType.AFTER)
