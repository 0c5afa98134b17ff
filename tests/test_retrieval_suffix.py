"""Suffix retrieval: known continuations, longest match, sources, eviction, determinism."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever
from graft_sglang.retrieval.suffix_index import SEPARATOR, SuffixIndex


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
    assert len(r._request("a")) == 32
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


def naive_match(held: dict[int, int], end: int, context: list[int], keys: tuple[int, ...],
                max_match: int) -> tuple[int, tuple[int, ...]]:
    """Longest backward match of ``context`` ending at any held position that a token follows."""
    limit = min(max_match, len(context))
    lengths = {}
    for q in held:
        if q + 1 >= end or held[q + 1] == SEPARATOR:
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
    st.tuples(st.just("append"), st.lists(st.integers(SEPARATOR, 3), min_size=1, max_size=12)),
    st.tuples(st.just("blank"), st.integers(0, 30), st.integers(0, 8)),
), min_size=1, max_size=12)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 30), st.sets(st.integers(1, 4), min_size=1),
       st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_index_matches_naive(operations, capacity, key_lengths, context) -> None:
    """Against a naive scan of the held text, through appends, FIFO eviction and blanking."""
    keys = tuple(sorted(key_lengths))
    index = SuffixIndex(capacity, keys, max_match=6, max_candidates=1000)
    held: dict[int, int] = {}
    end = 0
    for op in operations:
        if op[0] == "append":
            index.append(op[1])
            for t in op[1]:
                held[end] = t
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
    # Every hash head names an intact held occurrence of its key (so none outlives its text).
    for k, heads in index._heads.items():
        for key, pos in heads.items():
            assert pos >= index.start + k - 1 and index.tokens(pos - k + 1, pos + 1) == list(key)
    assert index.num_keys <= capacity * len(keys)
    got = index.match(context)
    assert (got.length, got.positions) == naive_match(held, end, context, keys, 6)
