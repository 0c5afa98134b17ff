"""Suffix retrieval: known continuations, longest match, sources, eviction, determinism."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="handle"):
        r.remove_corpus(h)


def test_own_text_outweighs_shared() -> None:
    r = SuffixRetriever()
    r.add_corpus([1, 2, 3, 8])
    r.start_request("a", [1, 2, 3, 9, 0, 1, 2, 3])
    c = r.propose("a", (), 8)
    first = {t: p for t, p, par in zip(c.tokens, c.probs, c.parents, strict=True) if par == -1}
    assert first[9] > first[8]


def test_eviction_respects_capacity() -> None:
    index = SuffixIndex(capacity=50, key_lengths=(1, 2, 4), max_match=8)
    index.append(list(range(100, 140)))  # old text
    assert index.match([110, 111]).length == 2
    index.append(list(range(200, 240)))  # pushes most of the old text out
    assert len(index) == 50 and index.start == 30
    assert index.match([110, 111]).length == 0  # evicted text is never proposed
    assert index.match([210, 211]).length == 2
    tables = sum(len(t) for t in index._tables.values())
    assert tables <= 3 * 50  # no key outlives its text


def test_request_capacity_and_shared_capacity() -> None:
    r = SuffixRetriever(SuffixConfig(shared_capacity=64, request_capacity=32))
    r.start_request("a", list(range(1000, 1100)))
    assert len(r._request("a")) == 32
    r.finish_request("a")
    for i in range(10):
        r.add_corpus(list(range(i * 10, i * 10 + 20)))
    assert len(r.shared) <= 64


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
    with pytest.raises(ValueError, match="token ids"):
        r.extend_request("a", [-5])
    for kwargs, match in [({"capacity": 0}, "capacity"), ({"key_lengths": (0,)}, "key_lengths"),
                          ({"max_match": 2}, "max_match"), ({"max_candidates": 0}, "max_cand")]:
        with pytest.raises(ValueError, match=match):
            SuffixIndex(**kwargs)
    with pytest.raises(ValueError, match="own_weight"):
        SuffixConfig(own_weight=0)


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
    def run() -> list:
        r = SuffixRetriever()
        r.add_corpus([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
        r.start_request("a", [2, 7, 1, 8, 2, 8, 1, 8, 2, 8, 4, 5, 9, 0, 4, 5])
        r.extend_request("a", [1, 4, 1, 5])
        return [r.propose("a", s, 10) for s in ((), (9,), (9, 2))]

    assert run() == run()
