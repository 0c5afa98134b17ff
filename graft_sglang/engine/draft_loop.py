"""The EAGLE-2/3 tree expansion loop, with SGLang's exact arithmetic and layout.

Level 0 takes the ``topk`` most likely children of the root. Every later level feeds the
``topk`` nodes selected at the previous level to the draft model, takes ``topk`` children of
each, scores them by cumulative probability (parent score times child probability) and selects
the ``topk`` best for the next level (``select_top_k_tokens`` in SGLang). The result is flattened
by ``from_eagle_draft_loop``, so the candidates are laid out exactly as SGLang's.

An optional ``stop(level, best_confidence)`` callback ends drafting early (the paper's
checkpoints): the levels not drafted cost no draft forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from graft_sglang.tree.draft import DraftCandidates, from_eagle_draft_loop

NextProbs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(tokens [k], parent_slots [k]) -> next-token probabilities [k, V]. ``parent_slots`` index the
nodes fed so far in feeding order (slot 0 = the root)."""


def expand_eagle_tree(
    root_probs: torch.Tensor,
    next_probs: NextProbs,
    topk: int,
    depth: int,
    stop: Callable[[int, float], bool] | None = None,
) -> DraftCandidates:
    """root_probs [V]: the draft distribution after the root. Returns candidates [1, M] with
    ``M = topk + (levels - 1) * topk**2`` for the levels actually drafted."""
    if topk < 1 or depth < 1:
        raise ValueError(f"topk and depth must be >= 1, got {topk}, {depth}")
    topk_p, topk_index = torch.topk(root_probs.float(), topk)
    score_list = [topk_p.view(1, 1, topk)]
    token_list = [topk_index.view(1, topk)]
    parents_list = [torch.arange(-1, topk).view(1, topk + 1)]
    scores = topk_p.view(1, topk)
    selected_tokens = topk_index
    selected_slots = torch.zeros(topk, dtype=torch.int64)  # level-0 nodes hang below the root
    fed = 1  # slots fed so far (the root)
    if stop is not None and stop(0, float(scores.max())):
        return from_eagle_draft_loop(score_list, token_list, parents_list, topk)
    for level in range(1, depth):
        probs = next_probs(selected_tokens, selected_slots)  # [topk, V]
        this_slots = torch.arange(fed, fed + topk)
        fed += topk
        child_p, child_idx = torch.topk(probs.float(), topk, dim=-1)  # [topk, topk]
        expand = scores.view(1, topk, 1) * child_p.view(1, topk, topk)
        top_p, top_i = torch.topk(expand.flatten(1), topk, dim=-1)
        score_list.append(expand)
        token_list.append(child_idx.reshape(1, topk * topk))
        parents_list.append(top_i + topk * topk * (level - 1) + topk)
        scores = top_p
        selected_tokens = child_idx.flatten()[top_i[0]]
        selected_slots = this_slots[top_i[0] // topk]
        if stop is not None and stop(level, float(scores.max())):
            break
    return from_eagle_draft_loop(score_list, token_list, parents_list, topk)
