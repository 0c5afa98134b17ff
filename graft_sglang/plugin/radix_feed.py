"""Mirror SGLang's radix cache into Graft's shared retrieval corpus, one corpus per tenant.

What the prefix cache holds (finished and checkpointed requests' token sequences) is what Graft
can graft from, and the corpus never holds much more than the cache. AFTER hooks
(``HookRegistry``, no patch) on the paths both prefix caches really take:

* ``insert`` (``RadixCache`` and the default ``UnifiedRadixCache``): only the tokens the insert
  added (the key past ``InsertResult.prefix_len``, the part the cache held before) become a
  corpus document, with the ``context`` tokens before them in front so that matches run across
  the boundary: O(new + context) per insert, whatever the sequence's length (a prompt prefilled
  in chunks costs its length once, not once per chunk).
* eviction (``RadixCache.evict``; ``UnifiedRadixCache._evict``, under both its ``evict`` and
  the ``evict_for_alloc`` the scheduler's allocator calls): the oldest documents leave until the
  documents stand for no more tokens than the cache holds (each stands for what its insert added
  to the cache; first in, first out, which approximates the cache's LRU).
* ``reset`` (what ``/flush_cache`` calls): every document of the feed leaves.

Finished text is indexed once: a feed turns its retriever's ``finished_to_corpus`` off, since
SGLang inserts every finished sequence into the cache (the feed then indexes its new tokens).

Tenants: a document belongs to the tenant ``radix_tenant(extra_key, cache_salt)`` of its radix
key, the pair the cache namespaces its tree by, so a request retrieves only text of its own
tenant (``retrieval.tenants``) and acceptance cannot leak one tenant's text to another. An
insert of a document its tenant holds already (text the cache evicted and took back while the
corpus kept it) replaces the held one, so no text is held twice; the check compares documents of
one tenant only.

Radix keys of multimodal requests carry image pad values (``>= vocab_size``, identities rather
than tokens): they never enter the corpus, so no retrieved continuation can hold one.

Costs on the scheduler thread: O(new + context) to cut, filter and hash a document; with the
native retriever the indexing itself runs in its background thread (``retrieval.native``).
Memory: O(held documents) bookkeeping (a 16-byte digest each), no copy of their tokens.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from graft_sglang.retrieval.tenants import radix_tenant

if TYPE_CHECKING:
    from graft_sglang.retrieval.native import NativeSuffixRetriever
    from graft_sglang.retrieval.suffix import SuffixRetriever

_active: RadixFeed | None = None  # the feed of this process's GRAFT worker


def vocabulary_tokens(tokens: Iterable[int], vocab_size: int | None) -> tuple[int, ...]:
    """``tokens`` without the values outside ``[0, vocab_size)`` (e.g. multimodal pad values;
    None: all kept). O(len(tokens))."""
    if vocab_size is None:
        return tuple(int(t) for t in tokens)
    return tuple(int(t) for t in tokens if 0 <= t < vocab_size)


class Document(NamedTuple):
    """A corpus document of the feed: its tenant, the cache tokens it stands for (what its
    insert added to the cache, in the cache's units) and a digest of its tokens."""

    tenant: Hashable
    cached: int
    digest: bytes


class RadixFeed:
    """Keeps ``retriever``'s shared corpus in step with one prefix cache (see the module
    docstring).

    retriever:     a suffix retriever (``SuffixRetriever`` or ``NativeSuffixRetriever``); its
                   ``finished_to_corpus`` is turned off.
    max_documents: most documents held (the oldest leave beyond).
    vocab_size:    the target's vocabulary; tokens outside it never reach the corpus (None:
                   no filter).
    """

    def __init__(self, retriever: SuffixRetriever | NativeSuffixRetriever,
                 max_documents: int = 4096, vocab_size: int | None = None) -> None:
        if max_documents < 1:
            raise ValueError(f"max_documents must be >= 1, got {max_documents}")
        self.retriever = retriever
        retriever.finished_to_corpus = False  # finished text arrives through the cache
        self.max_documents = max_documents
        self.vocab_size = vocab_size
        self.context = retriever.config.max_match  # the longest match the retriever makes
        self.documents: OrderedDict[int, Document] = OrderedDict()  # handle -> document
        self._handles: dict[tuple[Hashable, bytes], int] = {}  # (tenant, digest) -> handle
        self.tokens = 0  # cache tokens the documents stand for

    def activate(self) -> None:
        """Make this feed the one the cache hooks of this process report to."""
        global _active
        _active = self

    def on_insert(self, tokens: Sequence[int], held: int = 0, tenant: Hashable = None,
                  cached: int | None = None) -> None:
        """A cache insert of the sequence ``tokens`` (raw token ids), of which the cache held
        the first ``held`` before: ``tokens[max(0, held - context):]`` becomes one document
        of ``tenant`` (none if ``held`` covers all of them; one the tenant holds already is
        replaced), standing for ``cached`` cache tokens (what the insert added, in the cache's
        units; default ``len(tokens) - held``). O(len(tokens) - held + context)."""
        if held >= len(tokens):
            return
        cached = len(tokens) - held if cached is None else cached
        doc = self._document_tokens(tokens[max(0, held - self.context):])
        if len(doc) == 0:
            return
        digest = hashlib.blake2b(doc, digest_size=16).digest()
        held_handle = self._handles.get((tenant, digest))
        if held_handle is not None:  # re-added below: the corpus' order stays the feed's
            self._remove(held_handle)
        handle = self.retriever.add_corpus(doc, tenant)
        self.documents[handle] = Document(tenant, cached, digest)
        self._handles[tenant, digest] = handle
        self.tokens += cached
        while len(self.documents) > self.max_documents:
            self._remove(next(iter(self.documents)))

    def on_evict(self, cache_tokens: int) -> None:
        """The cache now holds ``cache_tokens``: the oldest documents leave until the rest
        stand for no more. O(documents removed + their tokens)."""
        while self.documents and self.tokens > cache_tokens:
            self._remove(next(iter(self.documents)))

    def on_reset(self) -> None:
        """The cache was emptied (``/flush_cache``): so is the feed's part of the corpus."""
        while self.documents:
            self._remove(next(iter(self.documents)))

    def _document_tokens(self, tokens: Sequence[int]) -> array:
        """``tokens`` as an int64 array (what the retrievers read in place) without the values
        outside the vocabulary."""
        doc = tokens if isinstance(tokens, array) and tokens.typecode == "q" else array(
            "q", tokens)
        if self.vocab_size is None or len(doc) == 0:
            return doc
        values = np.frombuffer(doc, dtype=np.int64)
        inside = (values >= 0) & (values < self.vocab_size)
        return doc if inside.all() else array("q", values[inside].tobytes())

    def _remove(self, handle: int) -> None:
        doc = self.documents.pop(handle)
        del self._handles[doc.tenant, doc.digest]
        self.tokens -= doc.cached
        self.retriever.remove_corpus(handle)


def _cache_tokens(cache: Any) -> int:
    return int(cache.evictable_size()) + int(cache.protected_size())


def _is_eagle(cache: Any) -> bool:
    """Whether the cache keys by bigrams (EAGLE-style speculative decoding)."""
    core = getattr(cache, "tree_core", None)  # UnifiedRadixCache keeps the flag in its core
    return bool(getattr(cache, "is_eagle", False) or getattr(core, "is_eagle", False))


def after_insert(result: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    """Report an insert's new tokens (its radix key past ``result.prefix_len``) to the feed."""
    params = args[0] if args else kwargs.get("params")
    key = getattr(params, "key", None)
    if _active is None or key is None or getattr(cache, "disable", False) or getattr(
            result, "rotation_tail_declined", False):  # declined: the tail was not inserted
        return result
    page = max(int(getattr(cache, "page_size", 1) or 1), 1)
    raw = len(key) + 1 if key.is_bigram and len(key) else len(key)  # raw tokens of the key
    prefix = int(result.prefix_len)  # in the tree's units, held before the insert
    if key.is_bigram or _is_eagle(cache):  # n bigram units span n + 1 raw tokens
        units = max(raw - 1, 0) // page * page  # the tree holds whole pages
        end, held = (units + 1 if units else 0), (prefix + 1 if prefix else 0)
    else:
        units = raw // page * page
        end, held = units, prefix
    if prefix >= units:
        return result
    first = max(0, held - _active.context)
    _active.on_insert(key.token_ids[first:end], held - first,
                      radix_tenant(key.extra_key, key.cache_salt), units - prefix)
    return result


def after_evict(result: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    if _active is not None:
        _active.on_evict(_cache_tokens(cache))
    return result


def after_reset(result: Any, cache: Any, *args: Any, **kwargs: Any) -> Any:
    if _active is not None:
        _active.on_reset()
    return result


HOOKS = (
    ("sglang.srt.mem_cache.radix_cache.RadixCache.insert", after_insert),
    ("sglang.srt.mem_cache.radix_cache.RadixCache.evict", after_evict),
    ("sglang.srt.mem_cache.radix_cache.RadixCache.reset", after_reset),
    ("sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.insert", after_insert),
    # evict and evict_for_alloc (the allocator's path) both evict through _evict
    ("sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache._evict", after_evict),
    ("sglang.srt.mem_cache.unified_radix_cache.UnifiedRadixCache.reset", after_reset),
)


def register_hooks() -> None:
    """AFTER hooks on the insert, eviction and reset paths of SGLang's radix caches (called at
    plugin load)."""
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    for target, hook in HOOKS:
        HookRegistry.register(target, hook, HookType.AFTER)
