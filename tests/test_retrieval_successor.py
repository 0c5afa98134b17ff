"""The successor table: updates from target logits, template walk, packing into the builder."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_sglang.retrieval.base import Continuations
from graft_sglang.retrieval.successor import PAPER_WIDTHS, SuccessorTable, rank_template
from graft_sglang.tree.builder import GraftConfig, NodeSource, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.retrieved import concat_retrieved, pack_retrieved


def test_paper_template() -> None:
    parents, ranks = rank_template(PAPER_WIDTHS, 10)
    assert len(parents) == sum(PAPER_WIDTHS) == 52
    assert all(parents[i] < i for i in range(len(parents)))
    # Level 0: ranks 0..7 of the root's row; level 1: every (parent rank + rank) <= 3, which is
    # exactly 10 nodes.
    assert list(zip(parents[:8], ranks[:8], strict=True)) == [(-1, r) for r in range(8)]
    assert sorted((ranks[parents[i]], ranks[i]) for i in range(8, 18)) == sorted(
        (a, b) for a in range(4) for b in range(4) if a + b <= 3)
    # The rank-0 chain reaches the last level.
    node, depth = -1, 0
    while True:
        child = [i for i in range(len(parents)) if parents[i] == node and ranks[i] == 0]
        if not child:
            break
        node, depth = child[0], depth + 1
    assert depth == len(PAPER_WIDTHS)


def test_walks_known_chains() -> None:
    table = SuccessorTable(vocab_size=20, k=3)
    # 1 -> (2, 3, 4); 2 -> (5, ...); 5 -> (6, ...)
    table.update(torch.tensor([1, 2, 5]),
                 torch.tensor([[2, 3, 4], [5, 7, 8], [6, 9, 10]]),
                 torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.8, 0.1, 0.1]]))
    cand = table.propose(torch.tensor([1, 11]), widths=(3, 2, 1), num_draft=0)
    # Request 0: level 0 = 2, 3, 4; level 1 = children of 2: 5, 7; level 2: 5 -> 6.
    assert cand.tokens[0][cand.valid[0]].tolist() == [2, 3, 4, 5, 7, 6]
    assert torch.allclose(cand.path_probs[0][:3], torch.tensor([0.6, 0.3, 0.1]))
    assert abs(float(cand.path_probs[0, 5]) - 0.6 * 0.9 * 0.8) < 1e-6
    assert not cand.valid[1].any()  # token 11 was never seen: nothing proposed
    tree = build_graft_tree(torch.tensor([1, 11]), torch.tensor([4, 4]), DraftCandidates.empty(2),
                            cand, GraftConfig(budget=7, threshold=None))
    assert tree.tokens[0].tolist() == [1, 2, 3, 4, 5, 7, 6]
    assert (tree.source[0, 1:] == NodeSource.RETRIEVED).all()
    assert (tree.source[1, 1:] == NodeSource.FILLER).all()


def test_update_from_logits_last_write_wins() -> None:
    table = SuccessorTable(vocab_size=8, k=2)
    logits = torch.full((3, 8), -10.0)
    logits[0, 3] = logits[1, 4] = logits[2, 5] = 10.0
    table.update_from_logits(torch.tensor([2, 2, 6]), logits)
    assert int(table.ids[2, 0]) == 4  # the later row for token 2
    assert int(table.ids[6, 0]) == 5
    assert (table.ids[0] == -1).all()


def test_draft_anchored_indices() -> None:
    table = SuccessorTable(vocab_size=10, k=2)
    table.update(torch.tensor([1]), torch.tensor([[2, 3]]), torch.tensor([[0.5, 0.5]]))
    table.update(torch.tensor([2]), torch.tensor([[4, 5]]), torch.tensor([[0.5, 0.5]]))
    cand = table.propose(torch.tensor([1]), widths=(2, 1), num_draft=7)
    assert cand.parents[0].tolist() == [-1, -1, 7]


def test_repeated_id_in_a_row_is_dropped_with_its_subtree() -> None:
    table = SuccessorTable(vocab_size=10, k=3)
    table.update(torch.tensor([1, 2]), torch.tensor([[2, 2, 3], [4, 5, 6]]),
                 torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1]]))
    assert table.ids[1].tolist() == [2, -1, 3]
    cand = table.propose(torch.tensor([1]), widths=(3, 3))
    # Level 0: 2, (dropped), 3; level 1 below 2: 4, 5 and below the dropped slot: nothing.
    assert cand.valid[0].tolist() == [True, False, True, True, True, False]
    assert cand.tokens[0][cand.valid[0]].tolist() == [2, 3, 4, 5]


def test_errors() -> None:
    with pytest.raises(ValueError, match="vocab_size must be >= 1"):
        SuccessorTable(0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        SuccessorTable(10, k=0)
    table = SuccessorTable(10, k=2)
    ids, probs = torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2)
    with pytest.raises(ValueError, match=r"tokens must be in \[0, 10\)"):
        table.update(torch.tensor([10]), ids, probs)
    with pytest.raises(ValueError, match=r"next_ids must be in \[-1, 10\)"):
        table.update(torch.tensor([1]), torch.tensor([[3, 12]]), probs)
    with pytest.raises(ValueError, match=r"next_probs must be in \[0, 1\]"):
        table.update(torch.tensor([1]), ids, torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="next_ids and next_probs"):
        table.update(torch.tensor([1]), torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 3))
    with pytest.raises(ValueError, match="integer tensor"):
        table.update(torch.tensor([1.0]), ids, probs)
    with pytest.raises(ValueError, match="logits"):
        table.update_from_logits(torch.tensor([1]), torch.zeros(1, 9))
    with pytest.raises(ValueError, match=r"root_tokens must be in \[0, 10\)"):
        table.propose(torch.tensor([-1]), widths=(2,))
    with pytest.raises(ValueError, match="root_tokens must be"):
        table.propose(torch.tensor([[1]]), widths=(2,))
    with pytest.raises(ValueError, match="num_draft"):
        table.propose(torch.tensor([1]), widths=(2,), num_draft=-1)
    with pytest.raises(ValueError, match="widths"):
        rank_template((), 2)
    with pytest.raises(ValueError, match=r"widths\[0\] = 3 exceeds"):
        rank_template((3,), 2)
    with pytest.raises(ValueError, match=r"widths\[1\] = 5 exceeds the 4 candidates"):
        rank_template((2, 5), 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.data())
def test_proposals_walk_the_table(k: int, data: st.DataObject) -> None:
    """Every valid slot is the table entry of its parent's token at its rank, with the path
    product as probability; a slot is valid iff its entry exists and its parent is valid;
    valid siblings are distinct; identical updates give identical proposals."""
    vocab = 6
    rows = data.draw(st.lists(st.tuples(
        st.integers(0, vocab - 1),
        st.lists(st.integers(-1, vocab - 1), min_size=k, max_size=k),
        st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=k, max_size=k)),
        max_size=8))
    widths, above = [], 1
    for _ in range(data.draw(st.integers(1, 4))):
        widths.append(data.draw(st.integers(1, min(above * k, 6))))
        above = widths[-1]
    roots = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3)))
    num_draft = data.draw(st.integers(0, 3))

    def build() -> SuccessorTable:
        table = SuccessorTable(vocab, k)
        for token, ids, probs in rows:
            table.update(torch.tensor([token]), torch.tensor([ids]), torch.tensor([probs]))
        return table

    table = build()
    cand = table.propose(roots, widths, num_draft)
    again = build().propose(roots, widths, num_draft)
    assert all(torch.equal(getattr(cand, f), getattr(again, f))
               for f in ("tokens", "parents", "path_probs", "valid"))
    template_parents, ranks = rank_template(tuple(widths), k)
    for b in range(roots.shape[0]):
        seen = set()
        for j, (par, rank) in enumerate(zip(template_parents, ranks, strict=True)):
            assert int(cand.parents[b, j]) == (-1 if par < 0 else par + num_draft)
            parent_ok = par < 0 or bool(cand.valid[b, par])
            parent_tok = int(roots[b]) if par < 0 else int(cand.tokens[b, par])
            parent_prob = 1.0 if par < 0 else float(cand.path_probs[b, par])
            entry, p = int(table.ids[parent_tok, rank]), float(table.probs[parent_tok, rank])
            assert bool(cand.valid[b, j]) == (parent_ok and entry >= 0 and p > 0)
            if cand.valid[b, j]:
                assert int(cand.tokens[b, j]) == entry
                assert abs(float(cand.path_probs[b, j]) - parent_prob * p) < 1e-6
                assert (par, entry) not in seen
                seen.add((par, entry))


def test_successor_and_suffix_slots_compete_in_one_tree() -> None:
    """``concat_retrieved``: the second source's slot links move past the first's slots, and
    the builder merges the sources' duplicate siblings (here both propose 7 below the root)."""
    table = SuccessorTable(vocab_size=16, k=2)
    table.update(torch.tensor([3, 7]), torch.tensor([[7, 8], [9, 10]]),
                 torch.tensor([[0.6, 0.3], [0.9, 0.05]]))
    succ = table.propose(torch.tensor([3]), widths=(2, 1), num_draft=1)
    suffix = pack_retrieved([[(-1, Continuations([7, 5], [-1, 0], [0.5, 0.5]))]], 1, 2)
    both = concat_retrieved(suffix, succ, num_draft=1)
    assert both.tokens.tolist() == [[7, 5, 7, 8, 9]]
    # suffix: 7 below the root, 5 below it (slot 0 = index 1); successor: 7 and 8 below the
    # root, 9 below its 7 (its slot 0, now slot 2 = index 3).
    assert both.parents.tolist() == [[-1, 1, -1, -1, 3]]
    draft = DraftCandidates(torch.tensor([[4]]), torch.tensor([[-1]]), torch.tensor([[0.2]]))
    tree = build_graft_tree(torch.tensor([3]), torch.tensor([5]), draft, both,
                            GraftConfig(budget=6, threshold=None))
    children_of_root = [t for t, p in zip(tree.tokens[0].tolist(), tree.parents[0].tolist(),
                                          strict=True) if p == 0]
    assert sorted(children_of_root) == [4, 7, 8]  # one 7, holding both sources' subtrees
    seven = tree.tokens[0].tolist().index(7)
    below = {t for t, p in zip(tree.tokens[0].tolist(), tree.parents[0].tolist(), strict=True)
             if p == seven}
    assert below == {5, 9}
