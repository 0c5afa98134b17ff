"""The tree builder's specification, checked on random EAGLE drafts and retrieved tries."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_sglang.tree.builder import GraftConfig, GraftTree, NodeSource, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.retrieved import RetrievedCandidates
from tests.naive_graft import naive_tree
from tests.random_inputs import eagle_draft, random_retrieved

VOCAB = 7  # small, so that retrieved tokens often coincide with draft tokens


@st.composite
def step_inputs(draw: st.DrawFn):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    bs = draw(st.integers(1, 3))
    topk = draw(st.integers(1, 4))
    depth = draw(st.integers(1, 4))
    draft = (
        eagle_draft(gen, bs, topk, depth, VOCAB, peaked=draw(st.floats(0.5, 4.0)))
        if draw(st.integers(0, 5)) else DraftCandidates.empty(bs)
    )
    retrieved = (
        random_retrieved(gen, bs, draft.num_candidates, VOCAB, draw(st.integers(1, 12)))
        if draw(st.integers(0, 4)) else RetrievedCandidates.empty(bs)
    )
    config = GraftConfig(
        budget=draw(st.integers(2, 24)),
        threshold=draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
        relative=draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
        draft_quota=draw(st.one_of(st.none(), st.integers(0, 20))),
        retrieval_weight=draw(st.floats(0.05, 1.0)),
        top_up_pruned=draw(st.booleans()),
        vocab_size=VOCAB,
    )
    roots = torch.randint(0, VOCAB, (bs,), generator=gen)
    seq_lens = torch.randint(0, 50, (bs,), generator=gen)
    return roots, seq_lens, draft, retrieved, config


def paths_of(tree: GraftTree, b: int) -> list[tuple[int, ...]]:
    toks, pars = tree.tokens[b].tolist(), tree.parents[b].tolist()
    paths: list[tuple[int, ...]] = [()]
    for i in range(1, len(toks)):
        paths.append(paths[pars[i]] + (toks[i],))
    return paths


@settings(max_examples=300, deadline=None)
@given(step_inputs())
def test_structure(inputs) -> None:
    roots, seq_lens, draft, retrieved, config = inputs
    tree = build_graft_tree(roots, seq_lens, draft, retrieved, config)
    bs, n = roots.shape[0], config.budget
    assert tree.tokens.shape == tree.parents.shape == tree.source.shape == (bs, n)
    assert torch.equal(tree.tokens[:, 0], roots)
    lay = tree.layout
    for b in range(bs):
        par = tree.parents[b].tolist()
        assert par[0] == -1
        assert all(0 <= par[i] < i for i in range(1, n)), "parents precede children"
        # No duplicate siblings.
        seen = set()
        for i in range(1, n):
            key = (par[i], int(tree.tokens[b, i]))
            assert key not in seen, f"duplicate sibling {key}"
            seen.add(key)
        # Mask == ancestor relation; positions == seq_len + depth.
        for i in range(n):
            anc, j = set(), i
            while j >= 0:
                anc.add(j)
                j = par[j]
            assert {k for k in range(n) if lay.ancestors[b, i, k]} == anc
            assert int(lay.positions[b, i]) == int(seq_lens[b]) + len(anc) - 1
        # retrieve_* walk exactly the tree: children of p, in ascending order.
        for p in range(n):
            walked, c = [], int(lay.retrieve_next_token[b, p])
            while c != -1:
                walked.append(c)
                c = int(lay.retrieve_next_sibling[b, c])
            assert walked == [i for i in range(1, n) if par[i] == p]
        assert lay.retrieve_index[b].tolist() == list(range(b * n, (b + 1) * n))
        # Fillers are the trailing slots and nothing else is.
        filler = [bool(s & NodeSource.FILLER) for s in tree.source[b].tolist()]
        k = int(tree.num_real[b])
        assert filler == [False] * k + [True] * (n - k)


@settings(max_examples=300, deadline=None)
@given(step_inputs())
def test_matches_naive_oracle(inputs) -> None:
    """Selection, merging, scores and sources equal the path-based restatement exactly."""
    roots, seq_lens, draft, retrieved, config = inputs
    tree = build_graft_tree(roots, seq_lens, draft, retrieved, config)
    for b in range(roots.shape[0]):
        expected = naive_tree(b, draft, retrieved, config)
        k = len(expected)
        assert int(tree.num_real[b]) == k + 1
        assert paths_of(tree, b)[1 : k + 1] == [nd.path for nd in expected]
        assert tree.source[b, 1 : k + 1].tolist() == [nd.source for nd in expected]
        assert torch.allclose(
            tree.scores[b, 1 : k + 1], torch.tensor([float(nd.score) for nd in expected])
        )


@settings(max_examples=200, deadline=None)
@given(step_inputs())
def test_pruning_keeps_the_most_confident(inputs) -> None:
    """No kept non-pruned node scores below a dropped non-pruned candidate (ties aside), and a
    pruned draft node is only kept when every unpruned candidate fits in the budget."""
    roots, seq_lens, draft, retrieved, config = inputs
    tree = build_graft_tree(roots, seq_lens, draft, retrieved, config)
    for b in range(roots.shape[0]):
        kept = {nd.path: nd for nd in naive_tree(b, draft, retrieved, config)}
        everything = naive_tree(b, draft, retrieved, GraftConfig(
            budget=10_000, threshold=config.threshold, relative=config.relative,
            draft_quota=config.draft_quota, retrieval_weight=config.retrieval_weight,
            top_up_pruned=config.top_up_pruned,
        ))
        dropped = [nd for nd in everything if nd.path not in kept]
        kept_unpruned = [nd.key for nd in kept.values() if nd.key >= 0]
        if kept_unpruned and dropped:
            assert min(kept_unpruned) >= max(nd.key for nd in dropped)
        if any(nd.key < 0 for nd in kept.values()):
            assert all(nd.key < 0 for nd in dropped)
        assert set(paths_of(tree, b)[1 : int(tree.num_real[b])]) == set(kept)


def test_draft_only_no_pruning_is_the_eagle_tree() -> None:
    """threshold=None and no retrieval: exactly SGLang's EAGLE selection (top N-1 by score,
    in ascending candidate order)."""
    gen = torch.Generator().manual_seed(0)
    draft = eagle_draft(gen, 4, 4, 5, 50)
    n = 24
    tree = build_graft_tree(
        torch.zeros(4, dtype=torch.int64), torch.full((4,), 9), draft,
        RetrievedCandidates.empty(4), GraftConfig(budget=n, threshold=None),
    )
    top = torch.sort(torch.topk(draft.scores, n - 1, dim=1).indices, dim=1).values
    assert torch.equal(tree.tokens[:, 1:], torch.gather(draft.tokens, 1, top))
    assert (tree.source[:, 1:] == NodeSource.DRAFT).all()


def test_worked_example() -> None:
    """Prune two weak draft leaves, graft a root chain and a draft-anchored chain, merge two
    retrieved tokens into existing draft nodes."""
    from graft_sglang.retrieval.base import Continuations
    from graft_sglang.tree.retrieved import pack_retrieved

    draft = DraftCandidates(
        tokens=torch.tensor([[10, 11, 12, 13, 14, 15]]),
        parents=torch.tensor([[-1, -1, 0, 0, 1, 1]]),
        scores=torch.tensor([[0.6, 0.3, 0.3, 0.2, 0.05, 0.04]]),
    )
    retrieved = pack_retrieved(
        [[(-1, Continuations.chain([11, 20, 21], [0.9, 0.9, 0.9])),
          (0, Continuations.chain([12, 30], [0.5, 0.5]))]], num_draft=6, max_slots=8,
    )
    tree = build_graft_tree(torch.tensor([1]), torch.tensor([100]), draft, retrieved,
                            GraftConfig(budget=8, threshold=0.1))
    assert tree.tokens.tolist() == [[1, 10, 11, 12, 13, 20, 21, 30]]
    assert tree.parents.tolist() == [[-1, 0, 0, 1, 1, 2, 5, 3]]
    both, d, r = 3, 1, 2
    assert tree.source.tolist() == [[0, d, both, both, d, r, r, r]]
    assert tree.layout.positions.tolist() == [[100, 101, 101, 102, 102, 102, 103, 103]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 1}, "budget"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"relative": -0.1}, "relative"),
        ({"retrieval_weight": 0.0}, "retrieval_weight"),
        ({"draft_quota": -1}, "draft_quota"),
        ({"vocab_size": 0}, "vocab_size"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GraftConfig(**kwargs)


def test_bad_inputs() -> None:
    gen = torch.Generator().manual_seed(1)
    draft = eagle_draft(gen, 2, 2, 2, 20)
    empty = RetrievedCandidates.empty(2)
    roots, lens = torch.tensor([1, 2]), torch.tensor([5, 6])
    cfg = GraftConfig(budget=4, vocab_size=20)
    with pytest.raises(ValueError, match="batch sizes"):
        build_graft_tree(torch.tensor([1]), torch.tensor([5]), draft, empty, cfg)
    with pytest.raises(ValueError, match="seq_lens"):
        build_graft_tree(roots, torch.tensor([5]), draft, empty, cfg)
    with pytest.raises(ValueError, match="root_tokens"):
        build_graft_tree(torch.tensor([1, 99]), lens, draft, empty, cfg)
    with pytest.raises(ValueError, match=r"draft.tokens .*outside \[0, 10\)"):
        build_graft_tree(roots, lens, draft, empty, GraftConfig(budget=4, vocab_size=10))
    bad_scores = DraftCandidates(draft.tokens, draft.parents, draft.scores + 1.0)
    with pytest.raises(ValueError, match=r"draft\.scores"):
        build_graft_tree(roots, lens, bad_scores, empty, cfg)
    bad_parents = DraftCandidates(draft.tokens, draft.parents.flip(1), draft.scores)
    with pytest.raises(ValueError, match=r"draft\.parents"):
        build_graft_tree(roots, lens, bad_parents, empty, cfg)
    with pytest.raises(ValueError, match="tokens must be"):
        DraftCandidates(torch.zeros(3), torch.zeros(3), torch.zeros(3))


def test_bad_retrieved() -> None:
    from graft_sglang.retrieval.base import Continuations
    from graft_sglang.tree.retrieved import pack_retrieved

    z = torch.zeros(1, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="anchors has shape"):
        RetrievedCandidates(z, z, torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 3),
                            torch.ones(1, 3, dtype=torch.bool))
    bad_probs = RetrievedCandidates(z, z - 1, z - 1, torch.full((1, 3), 2.0),
                                    torch.ones(1, 3, dtype=torch.bool))
    empty_draft = DraftCandidates.empty(1)
    with pytest.raises(ValueError, match="path_probs"):
        build_graft_tree(torch.tensor([1]), torch.tensor([5]), empty_draft, bad_probs,
                         GraftConfig(budget=4))
    # check_inputs=False skips the value checks (they read tensors on the host)
    build_graft_tree(torch.tensor([1]), torch.tensor([5]), empty_draft, bad_probs,
                     GraftConfig(budget=4, check_inputs=False))
    with pytest.raises(ValueError, match="outside"):
        pack_retrieved([[(-1, Continuations.chain([1], [1.5]))]], 0, 4)
    with pytest.raises(ValueError, match="anchor"):
        pack_retrieved([[(3, Continuations.chain([1], [0.5]))]], 2, 4)
    with pytest.raises(ValueError, match="max_slots"):
        pack_retrieved([], 0, -1)
    with pytest.raises(ValueError, match="parents"):
        Continuations([1, 2], [-1, 1], [0.5, 0.5])
    # Tries larger than the slots are cut, children of cut nodes too.
    packed = pack_retrieved([[(-1, Continuations([1, 2, 3], [-1, -1, 1], [0.5] * 3))]], 0, 2)
    assert packed.tokens.tolist() == [[1, 2]] and packed.valid.all()


def test_truncated_drops_fillers_and_relinks() -> None:
    draft = DraftCandidates(torch.tensor([[5, 6]]), torch.tensor([[-1, -1]]),
                            torch.tensor([[0.9, 0.8]]))
    tree = build_graft_tree(torch.tensor([1]), torch.tensor([3]), draft,
                            RetrievedCandidates.empty(1), GraftConfig(budget=6, threshold=None))
    assert int(tree.num_real[0]) == 3
    small = tree.truncated(3)
    assert small.tokens.tolist() == [[1, 5, 6]]
    assert small.layout.retrieve_next_sibling.tolist() == [[-1, 2, -1]]
    assert tree.layout.retrieve_next_sibling[0, 2] == 3  # the filler was a sibling before
    with pytest.raises(ValueError, match="n must be"):
        tree.truncated(0)
