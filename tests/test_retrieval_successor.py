"""The successor table: updates from target logits, template walk, packing into the builder."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.retrieval.successor import PAPER_WIDTHS, SuccessorTable, rank_template
from graft_sglang.tree.builder import GraftConfig, NodeSource, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates


def test_paper_template() -> None:
    parents, ranks = rank_template(PAPER_WIDTHS, 10)
    assert len(parents) == sum(PAPER_WIDTHS) == 52
    # The rank-0 chain reaches the last level.
    node, depth = len(parents) - 1, 0
    chain = [i for i in range(len(parents)) if ranks[i] == 0]
    assert len(chain) >= len(PAPER_WIDTHS)
    while node >= 0:
        node, depth = parents[node], depth + 1
    assert depth == len(PAPER_WIDTHS)
    assert all(parents[i] < i for i in range(len(parents)))


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


def test_errors() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        SuccessorTable(0)
    table = SuccessorTable(10, k=2)
    with pytest.raises(ValueError, match="tokens must be"):
        table.update(torch.tensor([10]), torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2))
    with pytest.raises(ValueError, match="next_ids"):
        table.update(torch.tensor([1]), torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 3))
    with pytest.raises(ValueError, match="logits"):
        table.update_from_logits(torch.tensor([1]), torch.zeros(1, 9))
    with pytest.raises(ValueError, match="widths"):
        rank_template((), 2)
    with pytest.raises(ValueError, match="exceeds"):
        rank_template((3,), 2)
