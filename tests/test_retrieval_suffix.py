"""Suffix retrieval: known continuations, longest match, sources, eviction, determinism."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_sglang.retrieval.base import RetrievalPlan
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever, draft_path
from graft_sglang.retrieval.suffix_index import SEPARATOR, SuffixIndex
from graft_sglang.step import draft_anchors
from graft_sglang.tree.builder import GraftConfig
from graft_sglang.tree.retrieved import pack_retrieved
from tests.random_inputs import eagle_draft


def paths(c) -> list[tuple[int, ...]]:
    out: list[tuple[int, ...]] = []
    for t, p in zip(c.tokens, c.parents, strict=True):
        out.append((out[p] if p >= 0 else ()) + (t,))
    return out


def test_repeats_own_text() -> None:
    r = SuffixRetriever()
    r.start_request("a", [1, 2, 3, 4, 5, 6, 1, 2, 3])
    c = r.propose("a", (), 8)
    assert paths(c)[-1] == (4, 5, 6, 1, 2, 3)
    assert all(0 < p <= 1 for p in c.probs)
    # With a draft path appended, retrieval continues after it.
    assert paths(r.propose("a", (4, 5), 8))[-1] == (6, 1, 2, 3)


def test_longest_match_wins() -> None:
    """Two occurrences of "2 3": after "1 2 3" comes 4, after "9 2 3" comes 7."""
    r = SuffixRetriever()
    r.start_request("a", [1, 2, 3, 4, 0, 9, 2, 3, 7, 0, 5, 1, 2, 3])
    c = r.propose("a", (), 4)
    assert c.tokens[0] == 4 and c.parents[0] == -1
    assert 7 not in [t for t, p in zip(c.tokens, c.parents, strict=True) if p == -1]
    # A context ending in "8 2 3" matches only "2 3": both continuations, equal weight.
    r.start_request("b", [1, 2, 3, 4, 0, 9, 2, 3, 7, 0, 8, 2, 3])
    roots = [t for t, p in zip(*(lambda c: (c.tokens, c.parents))(r.propose("b", (), 8)),
                               strict=True) if p == -1]
    assert sorted(roots) == [4, 7]


def test_shared_corpus_and_finished_requests() -> None:
    r = SuffixRetriever()
    r.start_request("a", [10, 11, 12, 13, 14])
    r.finish_request("a")
    r.start_request("b", [7, 11, 12])
    assert paths(r.propose("b", (), 8))[-1] == (13, 14)
    h = r.add_corpus([20, 21, 22, 23])
    assert r.propose("b", (21,), 4).tokens[:2] == [22, 23]
    r.remove_corpus(h)
    assert r.propose("b", (21,), 4).tokens == []
    r.remove_corpus(h)  # already removed: nothing to do
    with pytest.raises(ValueError, match="handle must be one returned by add_corpus"):
        r.remove_corpus(h + 1)


def test_own_text_outweighs_shared() -> None:
    r = SuffixRetriever()
    r.add_corpus([1, 2, 3, 8])
    r.start_request("a", [1, 2, 3, 9, 0, 1, 2, 3])
    c = r.propose("a", (), 8)
    first = {t: p for t, p, par in zip(c.tokens, c.probs, c.parents, strict=True) if par == -1}
    # Both match "1 2 3" (a tie): one trie, the request's own occurrence weighted own_weight.
    assert sorted(first) == [8, 9]
    assert first[9] / first[8] == pytest.approx(SuffixConfig().own_weight)


def test_probabilities_follow_the_documented_formula() -> None:
    """"1 2" occurs three times (preceded by 7, 8, 9: match length 2), followed by 3, 4, 3."""
    scale = 4.0
    r = SuffixRetriever(SuffixConfig(confidence_scale=scale))
    r.start_request("a", [7, 1, 2, 3, 8, 1, 2, 4, 9, 1, 2, 3, 6, 1, 2])
    c = r.propose("a", (), 4)
    # Best-first by path probability; the tie below "3" goes to the newer occurrence's 6.
    assert paths(c) == [(3,), (4,), (3, 6), (3, 8)]
    root = 1 - math.exp(-2 / scale)  # matched 2 tokens
    below = 1 - math.exp(-3 / scale)  # matched 2 + the path's 1
    assert c.probs == pytest.approx([2 / 3 * root, 1 / 3 * root, 1 / 2 * below, 1 / 2 * below])


def test_eviction_respects_capacity() -> None:
    index = SuffixIndex(capacity=50, key_lengths=(1, 2, 4), max_match=8)
    index.append(list(range(100, 140)))  # old text
    assert index.match([110, 111]).length == 2
    index.append(list(range(200, 240)))  # pushes most of the old text out
    assert len(index) == 50 and index.start == 30
    assert index.match([110, 111]).length == 0  # evicted text is never proposed
    assert index.match([210, 211]).length == 2
    assert index.num_keys <= 3 * 50  # no key outlives its text


def test_request_capacity_and_shared_capacity() -> None:
    r = SuffixRetriever(SuffixConfig(shared_capacity=64, request_capacity=32))
    r.start_request("a", [*range(1000, 1060), 1000, 1001])
    assert len(r._request("a")[0]) == 32
    # "1000 1001" was evicted from the request's own text: its old continuation is gone.
    assert r.propose("a", (), 8).tokens == []
    r.extend_request("a", [1040])
    assert r.propose("a", (), 2).tokens == [1041, 1042]  # still held
    r.finish_request("a")
    handles = [r.add_corpus(list(range(i * 10, i * 10 + 20))) for i in range(10)]
    assert len(r.shared) <= 64
    r.start_request("b", [5, 6])
    assert r.propose("b", (), 4).tokens == []  # the first corpus was evicted
    assert r.propose("b", (95,), 4).tokens == [96, 97, 98, 99]  # the last one is held
    # Handles of evicted text are forgotten (no growth over days) and removing them is a no-op.
    assert list(r._corpora) == handles[-3:]
    r.remove_corpus(handles[0])


def test_blank_removes_only_that_text() -> None:
    index = SuffixIndex(capacity=100)
    index.append([1, 2, 3, SEPARATOR, 4, 5, 6, SEPARATOR])
    index.blank(4, 7)
    assert index.match([4, 5]).length == 0
    assert index.match([1, 2]).length == 2


def test_errors() -> None:
    r = SuffixRetriever()
    with pytest.raises(ValueError, match="unknown request"):
        r.propose("nope")
    r.start_request("a", [1])
    with pytest.raises(ValueError, match="already started"):
        r.start_request("a", [1])
    with pytest.raises(ValueError, match="max_nodes"):
        r.propose("a", (), -1)
    with pytest.raises(ValueError, match="tokens must hold token ids >= 0"):
        r.extend_request("a", [-5])
    with pytest.raises(ValueError, match="prompt must hold token ids >= 0"):
        r.start_request("b", [1, -1])
    with pytest.raises(ValueError, match="suffix must hold token ids >= 0"):
        r.propose("a", (-1,))
    with pytest.raises(ValueError, match="tokens must hold token ids >= 0"):
        r.add_corpus([3, -1])
    with pytest.raises(ValueError, match="token ids must be >= 0"):
        SuffixIndex().append([-2])
    for kwargs, match in [({"capacity": 0}, "capacity"), ({"key_lengths": (0,)}, "key_lengths"),
                          ({"max_match": 2}, "max_match"), ({"max_candidates": 0}, "max_cand")]:
        with pytest.raises(ValueError, match=match):
            SuffixIndex(**kwargs)
    for kwargs, match in [({"own_weight": 0}, "own_weight must be > 0"),
                          ({"confidence_scale": -1}, "confidence_scale must be > 0"),
                          ({"max_match": 3}, r"max_match must be >= max\(4, min_match\) = 4"),
                          ({"min_match": 0}, "min_match must be >= 1"),
                          ({"request_capacity": 0}, "request_capacity must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            SuffixConfig(**kwargs)


texts = st.lists(st.integers(0, 5), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(texts, max_size=3), st.lists(st.integers(0, 5), max_size=3),
       st.integers(0, 12))
def test_proposals_are_real_continuations(own, others, suffix, max_nodes) -> None:
    """Every proposal is a valid trie of unique siblings, at most max_nodes, with probabilities
    in (0, 1], and every root-to-node path follows a real match of the context's suffix."""
    r = SuffixRetriever(SuffixConfig(max_match=6, max_depth=5))
    for i, text in enumerate(others):
        r.start_request(f"o{i}", text)
        r.finish_request(f"o{i}")
    r.start_request("a", own)
    c = r.propose("a", suffix, max_nodes)
    assert len(c) <= max_nodes
    assert all(0.0 < p <= 1.0 for p in c.probs)
    seen = set()
    for t, p in zip(c.tokens, c.parents, strict=True):
        assert (p, t) not in seen
        seen.add((p, t))
    context = (own + suffix)[-6:]
    corpora = [own, *others]
    for path in paths(c):
        # Some suffix of the context, followed by the path, occurs in some text.
        assert any(
            any(list(context[-m:]) + list(path) == text[i : i + m + len(path)]
                for text in corpora for i in range(len(text)))
            for m in range(1, len(context) + 1)
        ), path


def test_deterministic() -> None:
    """Same inserts in the same order (with eviction and removal) -> identical proposals."""

    def run() -> list:
        r = SuffixRetriever(SuffixConfig(shared_capacity=24, request_capacity=12))
        handle = r.add_corpus([8, 2, 8, 1, 8, 2, 8, 4])
        r.start_request("b", [3, 1, 4, 1, 5, 9, 2, 6])
        r.finish_request("b")
        r.remove_corpus(handle)
        r.add_corpus([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
        r.start_request("a", [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5])
        r.extend_request("a", [1, 4, 1, 5])
        return [r.propose("a", s, 10) for s in ((), (9,), (9, 2))]

    first = run()
    assert all(len(c) for c in first)
    assert first == run()


def naive_match(held: dict[int, int], namespaces: dict[int, int], end: int, context: list[int],
                keys: tuple[int, ...], max_match: int, namespace: int
                ) -> tuple[int, tuple[int, ...]]:
    """Longest backward match of ``context`` ending at any held position of ``namespace`` that a
    token follows."""
    limit = min(max_match, len(context))
    lengths = {}
    for q in held:
        if q + 1 >= end or held[q + 1] == SEPARATOR or namespaces[q] != namespace:
            continue
        n = 0
        while n < limit and held.get(q - n) == context[-n - 1]:
            n += 1
        lengths[q] = n
    best = max(lengths.values(), default=0)
    if best < keys[0]:
        return 0, ()
    return best, tuple(sorted((q for q, n in lengths.items() if n == best), reverse=True))


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.integers(SEPARATOR, 3), min_size=1, max_size=12),
              st.integers(0, 2)),
    st.tuples(st.just("blank"), st.integers(0, 30), st.integers(0, 8)),
), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 30), st.sets(st.integers(1, 4), min_size=1),
       st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_index_matches_naive(operations, capacity, key_lengths, context) -> None:
    """Against a naive scan of the held text, through appends in several namespaces, FIFO
    eviction and blanking."""
    keys = tuple(sorted(key_lengths))
    index = SuffixIndex(capacity, keys, max_match=6, max_candidates=1000)
    held: dict[int, int] = {}
    namespaces: dict[int, int] = {}
    end, current = 0, 0
    for op in operations:
        if op[0] == "append":
            tokens, namespace = op[1], op[2]
            if namespace != current and end and held[end - 1] != SEPARATOR:
                tokens = [SEPARATOR, *tokens]  # a namespace starts after a SEPARATOR
            index.append(tokens, namespace)
            current = namespace
            for t in tokens:
                held[end], namespaces[end] = t, namespace
                end += 1
                held.pop(end - capacity - 1, None)
        else:
            first = max(0, end - op[1])
            index.blank(first, first + op[2])
            for p in range(first, min(first + op[2], end)):
                if p in held:
                    held[p] = SEPARATOR
    assert (index.start, index.end) == (max(0, end - capacity), end)
    assert index.tokens(0, end) == [held[p] for p in sorted(held)]
    # Every hash head names an intact held occurrence of its key, in its namespace (so none
    # outlives its text).
    for k, heads in index._heads.items():
        for key, pos in heads.items():
            assert pos >= index.start + k - 1
            assert index.tokens(pos - k + 1, pos + 1) == list(key[1:])
            assert namespaces[pos] == key[0] == index.namespace_at(pos)
    assert index.num_keys <= capacity * len(keys)
    assert index.num_namespace_runs <= 1 + sum(t == SEPARATOR for t in held.values())
    for namespace in range(3):
        got = index.match(context, namespace)
        assert (got.length, got.positions) == naive_match(held, namespaces, end, context, keys,
                                                          6, namespace)


def test_namespace_changes_only_after_a_separator() -> None:
    index = SuffixIndex(capacity=16)
    index.append([1, 2, 3], namespace=4)
    with pytest.raises(ValueError, match="namespace 5 cannot follow namespace 4 without"):
        index.append([1, 2], namespace=5)
    index.append([SEPARATOR], namespace=4)
    index.append([1, 2, 3, 9], namespace=5)
    assert index.match([1, 2], 4).positions == (1,)
    assert index.match([1, 2], 5).positions == (5,)
    # "3 9" is namespace 5's text: namespace 4 never sees it.
    assert index.match([3], 5).positions == (6,)
    assert index.match([3], 4).length == 0
    assert [index.namespace_at(p) for p in range(8)] == [4] * 4 + [5] * 4


# -- tenants -----------------------------------------------------------------------------------
def test_tenant_sees_only_its_own_corpus() -> None:
    """Tenant A's text (a corpus document and a finished request) never reaches tenant B."""
    a, b = ("lora-1", "salt-a"), ("lora-1", "salt-b")
    r = SuffixRetriever()
    r.add_corpus([1, 2, 3, 4, 5], tenant=a)
    r.start_request("a0", [7, 8, 9, 10, 11], tenant=a)
    r.finish_request("a0")  # joins tenant A's corpus
    for rid, tenant in (("ra", a), ("rb", b), ("rn", None)):
        r.start_request(rid, [6, 1, 2], tenant=tenant)
    assert r.propose("ra", (), 4).tokens == [3, 4, 5]
    assert r.propose("ra", (8,), 4).tokens == [9, 10, 11]
    for rid in ("rb", "rn"):
        assert r.propose(rid, (), 4).tokens == []
        assert r.propose(rid, (8,), 4).tokens == []
    # B's own finished text is B's: B now retrieves it, A does not.
    r.start_request("b0", [1, 2, 30, 31], tenant=b)
    r.finish_request("b0")
    assert r.propose("rb", (), 4).tokens == [30, 31]
    assert r.propose("ra", (), 4).tokens == [3, 4, 5]
    packed = r.retrieve_packed(["ra", "rb"], torch.full((2, 1), -1), torch.zeros(2, 0,
                               dtype=torch.int64), torch.zeros(2, 0, dtype=torch.int64), 4, 0, 4)
    assert packed.tokens.tolist() == [[3, 4, 5, 0], [30, 31, 0, 0]]
    with pytest.raises(TypeError, match="tenant must be hashable"):
        r.start_request("bad", [1], tenant=["not", "hashable"])


def test_finished_text_stays_out_of_the_corpus_when_a_feed_adds_it() -> None:
    """With ``finished_to_corpus`` off, a finished request leaves nothing behind: its text and
    its tenant's reference go (a feed adds the same text itself)."""
    r = SuffixRetriever()
    r.finished_to_corpus = False
    r.start_request("a", [1, 2, 3, 4], tenant="t")
    r.finish_request("a")
    assert len(r.shared) == 0 and len(r.tenants) == 0
    r.start_request("q", [9, 1, 2], tenant="t")
    assert r.propose("q", (), 4).tokens == []
    r.finished_to_corpus = True
    r.finish_request("q")
    r.start_request("q2", [1, 9], tenant="t")
    assert r.propose("q2", (), 4).tokens == [1, 2]  # the default: finished text joins


def fed(events: list[tuple], tenant_of: dict[str, object], config: SuffixConfig,
        only: object = "all") -> SuffixRetriever:
    """A retriever fed ``events`` (all of them, or only those of tenant ``only``)."""
    r = SuffixRetriever(config)
    handles: dict[int, int] = {}
    for event in events:
        kind, tenant = event[0], event[1]
        if only != "all" and tenant != only:
            continue
        if kind == "corpus":
            handles[event[3]] = r.add_corpus(event[2], tenant=tenant)
        elif kind == "remove":
            if event[2] in handles:
                r.remove_corpus(handles[event[2]])
        else:  # a request that runs and finishes
            r.start_request(event[3], event[2], tenant=tenant)
            r.finish_request(event[3])
    for rid, tenant in tenant_of.items():
        if only == "all" or tenant == only:
            r.start_request(rid, [], tenant=tenant)
    return r


def random_tenant_events(rng: random.Random, n: int, tenants: list) -> list[tuple]:
    events: list[tuple] = []
    for i in range(n):
        tenant = rng.choice(tenants)
        text = [rng.randrange(6) for _ in range(rng.randrange(1, 30))]
        roll = rng.random()
        if roll < 0.45:
            events.append(("corpus", tenant, text, i))
        elif roll < 0.55 and events:
            victim = rng.choice(events)
            if victim[0] == "corpus":
                events.append(("remove", victim[1], victim[3]))
        else:
            events.append(("request", tenant, text, f"done{i}"))
    return events


@pytest.mark.parametrize("seed", range(6))
def test_tenants_are_isolated_randomized(seed: int) -> None:
    """Without eviction, a tenant's proposals are exactly those of a retriever that only ever
    saw that tenant's text: other tenants' text changes nothing (no continuation, no
    probability). With eviction (small shared capacity) every proposed path still continues a
    match in the request's own text or its tenant's documents."""
    rng = random.Random(seed)
    tenants = [None, ("k", None), ("k", "s1"), (None, "s1")]
    events = random_tenant_events(rng, 40, tenants)
    tenant_of = {f"live{t}": tenant for t, tenant in enumerate(tenants)}
    mixed = fed(events, tenant_of, SuffixConfig(max_match=6))
    for rid, tenant in tenant_of.items():
        alone = fed(events, tenant_of, SuffixConfig(max_match=6), only=tenant)
        for _ in range(8):
            suffix = [rng.randrange(6) for _ in range(rng.randrange(0, 4))]
            context = [rng.randrange(6) for _ in range(rng.randrange(0, 6))]
            mixed.extend_request(rid, context)
            alone.extend_request(rid, context)
            assert mixed.propose(rid, suffix, 12) == alone.propose(rid, suffix, 12)
    small = fed(events, tenant_of, SuffixConfig(max_match=6, shared_capacity=40))
    texts = {t: [e[2] for e in events if e[0] in ("corpus", "request") and e[1] == t]
             for t in tenants}
    for rid, tenant in tenant_of.items():
        own = [rng.randrange(6) for _ in range(rng.randrange(1, 6))]
        small.extend_request(rid, own)
        for path in paths(small.propose(rid, (), 12)):
            assert any(list(own[-m:]) + list(path) == text[i : i + m + len(path)]
                       for text in [own, *texts[tenant]] for m in range(1, len(own) + 1)
                       for i in range(len(text))), (tenant, path)


def test_shared_capacity_bounds_all_tenants_together() -> None:
    """One ring of shared_capacity tokens for every tenant; a tenant's bookkeeping goes with
    its last held document and its last live request."""
    r = SuffixRetriever(SuffixConfig(shared_capacity=100))
    for i in range(50):
        r.add_corpus(list(range(i, i + 9)), tenant=("salt", i))  # 10 tokens with the separator
        assert len(r.shared) <= 100
        assert len(r.tenants) <= 10  # only the tenants with a held document remain
    assert len(r.tenants) == 10 and len(r._documents) == 10
    r.start_request("x", [45, 46], tenant=("salt", 45))  # held: its corpus is retrieved
    assert r.propose("x", (), 3).tokens == [47, 48, 49]
    r.start_request("y", [5, 6], tenant=("salt", 5))  # evicted: nothing left of it
    assert r.propose("y", (), 3).tokens == []
    assert len(r.tenants) == 11  # the live request keeps its (empty) tenant
    r.finish_request("y")  # its text becomes its tenant's document: still 11
    assert len(r.tenants) == 11
    for _ in range(20):  # a burst from one tenant evicts every other tenant
        r.add_corpus(list(range(9)), tenant="burst")
    assert len(r.shared) == 100
    assert len(r.tenants) == 2  # "burst" and the live request's
    r.finish_request("x")  # its text stays retrievable in its tenant...
    assert len(r.tenants) == 2
    for _ in range(10):  # ...until the burst pushes it out
        r.add_corpus(list(range(9)), tenant="burst")
    assert len(r.tenants) == 1
    h = r.add_corpus([2, 3], tenant="last")
    r.remove_corpus(h)
    assert r.tenants.lookup("last") is None


def test_retrieve_packed_is_one_propose_per_query() -> None:
    """One batched call answers what a ``propose`` per query + pack_retrieved answer."""
    gen = torch.Generator().manual_seed(3)
    rng = random.Random(3)
    r = SuffixRetriever(SuffixConfig(max_match=6))
    config = GraftConfig(budget=16, threshold=0.05)
    plan = RetrievalPlan(root_nodes=6, draft_anchors=3, anchor_nodes=4)
    rids = [f"r{b}" for b in range(5)]
    for rid in rids:
        r.start_request(rid, [rng.randrange(8) for _ in range(60)], tenant=rid[-1] == "1")
    r.add_corpus([rng.randrange(8) for _ in range(80)])
    for _ in range(10):
        draft = eagle_draft(gen, len(rids), 3, 3, 8)
        anchors = draft_anchors(draft, config, plan.draft_anchors)
        tries = [[(-1, r.propose(rid, (), plan.root_nodes))] + [
            (node, r.propose(rid, draft_path(draft.tokens[b].tolist(),
                                             draft.parents[b].tolist(), node),
                             plan.anchor_nodes))
            for node in anchors[b].tolist() if node >= 0] for b, rid in enumerate(rids)]
        want = pack_retrieved(tries, draft.num_candidates, plan.max_slots)
        got = r.retrieve_packed(rids, anchors, draft.tokens, draft.parents, plan.root_nodes,
                                plan.anchor_nodes, plan.max_slots)
        assert got.valid.any()
        for name in ("tokens", "parents", "anchors", "path_probs", "valid"):
            assert torch.equal(getattr(got, name), getattr(want, name)), name
        for rid in rids:
            r.extend_request(rid, [rng.randrange(8) for _ in range(3)])
    with pytest.raises(ValueError, match="anchor 99 out of range"):
        r.retrieve_packed(rids[:1], torch.tensor([[99]]), draft.tokens[:1], draft.parents[:1],
                          4, 4, 8)
