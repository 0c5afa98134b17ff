"""DraftCandidates from SGLang's real draft-loop functions, and the EAGLE tree they imply."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.tree.builder import GraftConfig, build_graft_tree
from graft_sglang.tree.draft import from_eagle_draft_loop
from graft_sglang.tree.retrieved import RetrievedCandidates

spec_utils = pytest.importorskip("sglang.srt.speculative.spec_utils")
eagle_utils = pytest.importorskip("sglang.srt.speculative.eagle_utils")


def _kernel_parent_slots(parent_list: torch.Tensor, selected: torch.Tensor, topk: int) -> list:
    """The parent rule of SGLang's ``build_tree_efficient`` kernel (eagle.cuh), per request:
    node i's parent is the slot of ``parent_list[selected[i-1] // topk]`` among the selected
    candidates (slot 0 = root when ``selected[i-1] // topk == 0``)."""
    out = []
    for b in range(selected.shape[0]):
        sel = selected[b].tolist()
        row = [-1]
        for c in sel:
            tb = c // topk
            row.append(0 if tb == 0 else sel.index(int(parent_list[b, tb])) + 1)
        out.append(row)
    return out


@pytest.mark.parametrize(("topk", "depth", "n"), [(2, 3, 6), (4, 4, 16), (3, 5, 24), (8, 2, 32)])
def test_real_draft_loop(topk: int, depth: int, n: int) -> None:
    torch.manual_seed(topk * 100 + depth)
    bs, vocab = 3, 40
    score_list, token_list, parents_list = [], [], []
    hidden = torch.randn(bs, 8)
    scores = None
    probs = torch.softmax(torch.randn(bs, vocab) * 3, dim=-1)
    topk_p, topk_index = torch.topk(probs, topk, dim=-1)
    for i in range(depth):
        _, hidden_i, scores, tree_info = spec_utils.select_top_k_tokens(
            i, topk_p, topk_index, hidden, scores, topk
        )
        score_list.append(tree_info[0])
        token_list.append(tree_info[1])
        parents_list.append(tree_info[2])
        hidden = hidden_i
        probs = torch.softmax(torch.randn(bs * topk, vocab) * 3, dim=-1)
        topk_p, topk_index = torch.topk(probs, topk, dim=-1)
    parent_list, top_scores_index, draft_tokens = eagle_utils.organize_draft_results(
        score_list, token_list, parents_list, n
    )
    draft = from_eagle_draft_loop(score_list, token_list, parents_list, topk)
    assert draft.num_candidates == topk + (depth - 1) * topk * topk
    # Cumulative scores: every child's score is its parent's times a probability <= 1.
    par = draft.parents
    has = par >= 0
    parent_scores = torch.gather(draft.scores, 1, par.clamp(min=0))
    assert bool((draft.scores[has] <= parent_scores[has] + 1e-6).all())

    tree = build_graft_tree(
        torch.full((bs,), 7), torch.full((bs,), 30), draft, RetrievedCandidates.empty(bs),
        GraftConfig(budget=n, threshold=None),
    )
    assert torch.equal(tree.tokens[:, 1:], draft_tokens)
    assert tree.parents.tolist() == _kernel_parent_slots(parent_list, top_scores_index, topk)


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="topk"):
        from_eagle_draft_loop([torch.zeros(1, 1, 2)], [torch.zeros(1, 2)], [torch.zeros(1, 3)], 0)
    with pytest.raises(ValueError, match="same non-zero length"):
        from_eagle_draft_loop([], [], [], 2)
