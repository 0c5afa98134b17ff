"""The radix feed against SGLang 0.5.23's real prefix caches on CPU: the default
``UnifiedRadixCache`` (FULL component, Rust tree core, as a server builds it) and the classic
``RadixCache``, with plain and EAGLE (bigram) keys. Inserts index only their new tokens and answer
like whole sequences away from the chunk boundaries; evictions through the allocator's path
shrink the corpus; finished text is indexed once; tenants never see each other's text; a flush
empties the corpus; memory stays bounded."""

from __future__ import annotations

import functools
import random
from array import array
from collections.abc import Callable

import pytest
import torch

sglang = pytest.importorskip("sglang")

from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey  # noqa: E402
from sglang.srt.mem_cache.unified_cache.components.base import ComponentType  # noqa: E402
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402

from graft_sglang.plugin import radix_feed  # noqa: E402
from graft_sglang.plugin.radix_feed import RadixFeed  # noqa: E402
from graft_sglang.retrieval.native import NativeSuffixRetriever  # noqa: E402
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever  # noqa: E402
from graft_sglang.retrieval.tenants import radix_tenant  # noqa: E402

torch.set_num_threads(1)
load_plugins()  # registers GRAFT, whose load applies the feed's cache hooks

Retriever = SuffixRetriever | NativeSuffixRetriever
RETRIEVERS: list[Callable[[SuffixConfig], Retriever]] = [SuffixRetriever, NativeSuffixRetriever]


class Cache:
    """One real prefix cache and its allocator; inserts as SGLang's ``checkpoint`` does (a
    tenant's key over a request's tokens, bigram-flagged when the cache is EAGLE's)."""

    def __init__(self, kind: str, eagle: bool = False, size: int = 4096) -> None:
        kv = MHATokenToKVPool(size=size, page_size=1, dtype=torch.bfloat16, head_num=1,
                              head_dim=8, layer_num=1, device="cpu", enable_memory_saver=False)
        self.alloc = TokenToKVPoolAllocator(size=size, dtype=torch.bfloat16, device="cpu",
                                            kvcache=kv, need_sort=False)
        params = CacheInitParams(
            disable=False, req_to_token_pool=ReqToTokenPool(
                size=4, max_context_len=size, device="cpu", enable_memory_saver=False),
            token_to_kv_pool_allocator=self.alloc, page_size=1, is_eagle=eagle,
            tree_components=(ComponentType.FULL,))
        self.tree = UnifiedRadixCache(params) if kind == "unified" else RadixCache(params)
        self.eagle = eagle
        self.kind = kind

    def insert(self, tokens: list[int], salt: str | None = None,
               extra_key: str | None = None) -> None:
        key = RadixKey(array("q", tokens), extra_key, is_bigram=self.eagle, cache_salt=salt)
        value = self.alloc.alloc(len(key))
        result = self.tree.insert(InsertParams(key=key, value=value))
        if isinstance(self.tree, RadixCache):  # its caller frees the duplicates it exposed
            self.alloc.free(value[: result.prefix_len])

    @property
    def tokens(self) -> int:
        return int(self.tree.evictable_size()) + int(self.tree.protected_size())


PLAIN = radix_tenant(None, None)  # a request with neither extra_key nor cache_salt
KINDS = [("unified", False), ("unified", True), ("radix", False), ("radix", True)]
KIND_IDS = ["unified", "unified-eagle", "radix", "radix-eagle"]


@pytest.fixture
def activate(request: pytest.FixtureRequest) -> Callable[[RadixFeed], RadixFeed]:
    """Makes a feed the active one for the test, and none afterwards."""
    request.addfinalizer(functools.partial(setattr, radix_feed, "_active", None))

    def make_active(feed: RadixFeed) -> RadixFeed:
        feed.activate()
        return feed

    return make_active


def test_hooks_sit_on_the_paths_the_caches_take() -> None:
    """insert / _evict / reset of the default cache (evict and evict_for_alloc both evict
    through _evict), insert / evict / reset of the classic one."""
    for method in ("insert", "_evict", "reset"):
        assert hasattr(getattr(UnifiedRadixCache, method), "__wrapped__"), method
    for method in ("insert", "evict", "reset"):
        assert hasattr(getattr(RadixCache, method), "__wrapped__"), method


@pytest.mark.parametrize(("kind", "eagle"), KINDS, ids=KIND_IDS)
def test_an_insert_indexes_only_its_new_tokens(activate, kind: str, eagle: bool) -> None:
    """A chunk after a held prefix becomes a document of its new tokens with the prefix's last
    max_match tokens in front, standing for what the insert added to the cache; an insert of
    nothing new (a repeated sequence, the prompt split SGLang inserts after the full sequence)
    indexes nothing."""
    cache = Cache(kind, eagle)
    retriever = SuffixRetriever(SuffixConfig(max_match=8))
    feed = activate(RadixFeed(retriever))
    rng = random.Random(0)
    seq = [rng.randrange(1000) for _ in range(100)]
    cache.insert(seq[:40])
    cache.insert(seq[:100])
    assert len(retriever.shared) == (40 + 1) + (8 + 60 + 1)  # each document and its SEPARATOR
    cached = [doc.cached for doc in feed.documents.values()]
    assert cached == [40 - eagle, 60]  # a bigram key of n tokens is n - 1 cache tokens
    assert feed.tokens == sum(cached) == cache.tokens
    cache.insert(seq[:100])
    cache.insert(seq[:70])
    assert [doc.cached for doc in feed.documents.values()] == cached
    assert len(retriever.shared) == 110
    # the boundary is spanned: the prefix's last tokens continue into the new chunk
    feed.retriever.start_request("q", seq[30:40], tenant=PLAIN)
    assert feed.retriever.propose("q", (), 4).tokens == seq[40:44]


@pytest.mark.parametrize(("kind", "eagle"), KINDS, ids=KIND_IDS)
def test_chunked_inserts_answer_like_the_whole_sequence(activate, kind: str,
                                                       eagle: bool) -> None:
    """A sequence inserted chunk by chunk (chunked prefill, then decode checkpoints) gives the
    proposals of the whole sequence as one document, for every query whose longest matches all
    lie farther than max(max_match, max_depth) before a chunk boundary (nearer, a match may
    also meet the boundary's context copy or stop at a chunk's end)."""
    config = SuffixConfig(max_match=6, max_depth=5, max_occurrences=64)
    cache = Cache(kind, eagle)
    feed = activate(RadixFeed(SuffixRetriever(config)))
    whole = SuffixRetriever(config)
    rng = random.Random(1)
    library = [[rng.randrange(30) for _ in range(12)] for _ in range(5)]
    seq: list[int] = []
    while len(seq) < 600:  # repeated passages (long matches) and noise (short ones)
        seq.extend(rng.choice(library) if rng.random() < 0.6 else
                   [rng.randrange(30) for _ in range(rng.randrange(1, 5))])
    boundaries, end = [], 0
    while end < len(seq):
        end = min(len(seq), end + rng.choice([7, 30, 64, 120]))
        cache.insert(seq[:end])
        boundaries.append(end)
    whole.add_corpus(seq, tenant=PLAIN)
    margin = max(config.max_match, config.max_depth)
    near = {p for b in boundaries[:-1] for p in range(b - margin, b)}
    compared = 0
    for j in range(config.max_match, len(seq) - 1):
        context = seq[j - config.max_match + 1 : j + 1]
        if set(whole.shared.match(context, 0).positions) & near:
            continue
        for r in (feed.retriever, whole):
            r.start_request("q", context, tenant=PLAIN)
        got, want = (r.propose("q", (), 12) for r in (feed.retriever, whole))
        assert (got.tokens, got.parents, got.probs) == (want.tokens, want.parents, want.probs)
        for r in (feed.retriever, whole):
            r.finish_request("q")
        compared += bool(want.tokens)
    assert compared > 200  # most queries are away from a boundary, and do retrieve


@pytest.mark.parametrize("eagle", [False, True])
def test_evictions_of_the_default_cache_shrink_the_corpus(activate, eagle: bool) -> None:
    """The allocator's path (evict_for_alloc) and evict: after each, the corpus holds no more
    tokens than the cache; the oldest documents go first and are no longer retrieved."""
    cache = Cache("unified", eagle, size=400)
    feed = activate(RadixFeed(SuffixRetriever()))
    rng = random.Random(2)
    texts = [[rng.randrange(1000, 2000) for _ in range(60)] for _ in range(5)]
    for text in texts:
        cache.insert(text)
    assert len(feed.documents) == 5 and feed.tokens == cache.tokens == 300 - 5 * eagle
    cache.tree.evict_for_alloc(EvictParams(num_tokens=cache.alloc.available_size() + 100))
    assert 0 < feed.tokens <= cache.tokens < 295
    assert len(feed.documents) < 5
    feed.retriever.start_request("old", texts[0][:10], tenant=PLAIN)
    assert feed.retriever.propose("old", (), 4).tokens == []  # the oldest text is gone
    feed.retriever.start_request("new", texts[-1][:10], tenant=PLAIN)
    assert feed.retriever.propose("new", (), 4).tokens == texts[-1][10:14]
    cache.tree.evict(EvictParams(num_tokens=cache.tokens))
    assert cache.tokens == 0 and feed.tokens == 0 and not feed.documents
    assert feed.retriever.propose("new", (), 4).tokens == []


@pytest.mark.parametrize("make", RETRIEVERS, ids=["python", "native"])
def test_finished_text_is_indexed_once(activate, make) -> None:
    """A request finishes (the retriever drops it without adding its text) and SGLang inserts
    its sequence (the feed adds it): the corpus holds the text once."""
    retriever = make(SuffixConfig())
    cache = Cache("unified")
    activate(RadixFeed(retriever))
    text = list(range(100, 140))
    retriever.start_request("r", text[:30], tenant=PLAIN)
    retriever.extend_request("r", text[30:])
    retriever.finish_request("r")
    cache.insert(text)
    shared = retriever.shared if isinstance(retriever, SuffixRetriever) else None
    held = len(shared) if shared is not None else retriever._native.shared_size
    assert held == len(text) + 1  # one document and its SEPARATOR
    retriever.start_request("q", [7, 110], tenant=PLAIN)
    assert retriever.propose("q", (), 3).tokens == [111, 112, 113]


@pytest.mark.parametrize("make", RETRIEVERS, ids=["python", "native"])
def test_a_tenant_never_receives_another_tenants_text(activate, make) -> None:
    """Tenant A's text (salt A, or A's extra_key) is held in A's corpus only: a request of
    salt B, of no salt, or of another extra_key gets no continuation found only in it; the same
    text under two tenants is two documents, one each."""
    retriever = make(SuffixConfig())
    cache = Cache("unified")
    feed = activate(RadixFeed(retriever))
    secret = [501, 502, 503, 504, 505, 506]
    cache.insert([1, 2, *secret], salt="A")
    cache.insert([3, 4, *secret], extra_key="lora-a")
    tenants = {"salt A": radix_tenant(None, "A"), "salt B": radix_tenant(None, "B"),
               "none": radix_tenant(None, None), "lora-a": radix_tenant("lora-a", None),
               "lora-b": radix_tenant("lora-b", None), "lora-a, salt A":
               radix_tenant("lora-a", "A")}
    for name, tenant in tenants.items():
        retriever.start_request(name, [9, 501, 502], tenant=tenant)
    for name in tenants:
        proposed = retriever.propose(name, (), 6).tokens
        assert proposed == ([503, 504, 505, 506] if name in ("salt A", "lora-a") else []), name
    cache.insert([1, 2, *secret], salt="B")  # the same text, salt B's own now
    assert len(feed.documents) == 3
    assert retriever.propose("salt B", (), 6).tokens == [503, 504, 505, 506]
    assert retriever.propose("none", (), 6).tokens == []


def test_text_a_tenant_holds_already_is_replaced_not_doubled() -> None:
    """The same document of the same tenant (the cache evicted it and took it back while the
    corpus kept it) is held once, as the newest; another tenant's copy is its own."""
    retriever = SuffixRetriever()
    feed = RadixFeed(retriever)
    feed.on_insert(array("q", [1, 2, 3, 4]), tenant="a")
    feed.on_insert(array("q", [5, 6, 7]), tenant="a")
    feed.on_insert(array("q", [1, 2, 3, 4]), tenant="a")
    assert [(d.tenant, d.cached) for d in feed.documents.values()] == [("a", 3), ("a", 4)]
    feed.on_insert([1, 2, 3, 4], tenant="b")
    assert len(feed.documents) == 3 and feed.tokens == 11
    feed.on_evict(cache_tokens=8)  # the oldest leaves first: a's [5, 6, 7]
    assert [d.cached for d in feed.documents.values()] == [4, 4]


@pytest.mark.parametrize(("kind", "eagle"), KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("make", RETRIEVERS, ids=["python", "native"])
def test_a_flush_empties_the_corpus(activate, make, kind: str, eagle: bool) -> None:
    """``/flush_cache`` resets the cache: the feed forgets every document it added."""
    retriever = make(SuffixConfig())
    cache = Cache(kind, eagle)
    feed = activate(RadixFeed(retriever))
    cache.insert([1, 2, 3, 4, 5, 6], salt="A")
    cache.insert([7, 8, 9, 10])
    retriever.start_request("q", [42, 8], tenant=PLAIN)
    assert retriever.propose("q", (), 2).tokens == [9, 10]
    cache.tree.reset()
    assert not feed.documents and feed.tokens == 0
    assert retriever.propose("q", (), 2).tokens == []
    cache.insert([7, 8, 11, 12])  # the cache fills again, and so does the corpus
    assert retriever.propose("q", (), 2).tokens == [11, 12]


def test_memory_stays_bounded_over_a_long_stream(activate) -> None:
    """Many requests through a small cache: after every eviction the corpus holds no more
    tokens than the cache, at most max_documents documents, and its bookkeeping matches."""
    cache = Cache("unified", size=300)
    feed = activate(RadixFeed(SuffixRetriever(SuffixConfig(shared_capacity=2000)),
                              max_documents=6))
    rng = random.Random(3)
    prompts = [[rng.randrange(500) for _ in range(20)] for _ in range(4)]
    for step in range(150):
        seq = rng.choice(prompts) + [rng.randrange(500) for _ in range(rng.randrange(1, 40))]
        if cache.alloc.available_size() < len(seq):
            cache.tree.evict_for_alloc(EvictParams(num_tokens=len(seq)))
            assert feed.tokens <= cache.tokens, step
        cache.insert(seq, salt=rng.choice([None, "A"]))
        assert len(feed.documents) <= 6
        assert feed.tokens == sum(d.cached for d in feed.documents.values())
        assert len(feed._handles) == len(feed.documents)
    assert len(feed.retriever.shared) <= 2000


def test_the_feed_holds_at_most_max_documents() -> None:
    retriever = SuffixRetriever()
    feed = RadixFeed(retriever, max_documents=2)
    for text in ([1, 2, 3], [4, 5, 6, 7], [8, 9]):
        feed.on_insert(text)
    assert [d.cached for d in feed.documents.values()] == [4, 2]  # the oldest left
    retriever.start_request("q", [9, 1])
    assert retriever.propose("q", (), 2).tokens == []
    with pytest.raises(ValueError, match="max_documents must be >= 1"):
        RadixFeed(retriever, max_documents=0)


def test_without_a_radix_cache_finished_text_reaches_the_corpus() -> None:
    """``--disable-radix-cache``: no feed, so a finished request's own text joins the shared
    corpus (with a feed it comes through the cache's insert instead)."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    from graft_sglang.plugin.settings import GraftSettings
    from graft_sglang.plugin.worker import GraftState

    fed = GraftState(GraftSettings(), 8, None)
    assert fed.radix_feed is not None and not fed.retriever.finished_to_corpus
    state = GraftState(GraftSettings(), 8, None, radix_cache=False)
    assert state.radix_feed is None and state.retriever.finished_to_corpus
    first = Req("a", "", array("q", [1, 2, 3]), SamplingParams())
    first.output_ids.extend([5, 6, 7, 40, 41])
    state.sync([first])
    state.finish("a")
    later = Req("b", "", array("q", [9, 5, 6, 7]), SamplingParams())
    state.sync([later])
    assert state.retriever.propose("b", (), 4).tokens[:1] == [40]
