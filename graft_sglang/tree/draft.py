"""Draft candidates: the EAGLE-2/3 draft loop's output, flattened per request.

SGLang's draft loop (``EagleDraftWorker.draft_forward``) expands a tree ``depth`` levels deep:
level 0 proposes ``topk`` children of the root; each later level expands the ``topk`` best nodes
of the previous level into ``topk`` children each. The candidate index space has
``M = topk + (depth - 1) * topk**2`` entries. ``DraftCandidates`` stores that space with explicit
parent pointers and cumulative confidences (product of draft probabilities on the root path), the
form every Graft tree builder consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DraftCandidates:
    """Candidate draft nodes of one decoding step.

    tokens:  [bs, M] int64, the proposed token of each candidate.
    parents: [bs, M] int64, parent candidate index (``-1`` = the tree root); ``parents[b, i] < i``.
    scores:  [bs, M] float32, cumulative draft confidence of the candidate (in [0, 1]).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.tokens.shape)
        if self.tokens.dim() != 2:
            raise ValueError(f"DraftCandidates.tokens must be [bs, M], got shape {shape}")
        for name in ("parents", "scores"):
            other = tuple(getattr(self, name).shape)
            if other != shape:
                raise ValueError(f"DraftCandidates.{name} has shape {other}, tokens has {shape}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_candidates(self) -> int:
        return self.tokens.shape[1]

    @staticmethod
    def empty(batch_size: int, device: torch.device | str = "cpu") -> DraftCandidates:
        """No draft at all (retrieval-only decoding)."""
        z = torch.zeros(batch_size, 0, dtype=torch.int64, device=device)
        return DraftCandidates(z, z.clone(), torch.zeros(batch_size, 0, device=device))


def eagle_candidate_parents(topk: int, depth: int, expanded: torch.Tensor) -> torch.Tensor:
    """Parent candidate index of every candidate of an EAGLE draft loop.

    expanded: [bs, depth - 1, topk] int64; ``expanded[:, i]`` holds the candidate indices whose
        children form level ``i + 1`` (level 1 expands all of level 0: candidates 0..topk-1).
    Returns [bs, M] int64 with ``-1`` for the root's children.
    """
    bs = expanded.shape[0]
    device = expanded.device
    root_children = torch.full((bs, topk), -1, dtype=torch.int64, device=device)
    if depth == 1:
        return root_children
    # Candidate topk + (i-1)*topk^2 + r*topk + c is child c of expanded node r of level i-1.
    later = expanded.repeat_interleave(topk, dim=2).reshape(bs, (depth - 1) * topk * topk)
    return torch.cat([root_children, later], dim=1)


def from_eagle_draft_loop(
    score_list: Sequence[torch.Tensor],
    token_list: Sequence[torch.Tensor],
    parents_list: Sequence[torch.Tensor],
    topk: int,
) -> DraftCandidates:
    """Flatten SGLang's per-level draft-loop lists (``select_top_k_tokens`` ``tree_info``).

    score_list[i]:   [bs, 1, topk] (i = 0) or [bs, topk, topk]: cumulative path probabilities.
    token_list[i]:   [bs, topk] (i = 0) or [bs, topk * topk]: candidate tokens.
    parents_list[i]: [bs, topk + 1] (i = 0, ``arange(-1, topk)``) or [bs, topk]: candidate indices
        of the level-i nodes that level i + 1 expands (the last entry is never used).
    """
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    depth = len(score_list)
    if depth < 1 or len(token_list) != depth or len(parents_list) != depth:
        raise ValueError(
            "score_list, token_list and parents_list must have the same non-zero length, got "
            f"{len(score_list)}, {len(token_list)}, {len(parents_list)}"
        )
    scores = torch.cat([s.flatten(1) for s in score_list], dim=1).float()
    tokens = torch.cat(list(token_list), dim=1).to(torch.int64)
    bs = tokens.shape[0]
    if depth > 1:
        # parents_list[0] is arange(-1, topk): drop the root's -1; the last level is never expanded.
        levels = [parents_list[0][:, 1:], *parents_list[1 : depth - 1]]
        expanded = torch.stack([p.to(torch.int64) for p in levels], dim=1)
    else:
        expanded = torch.zeros(bs, 0, topk, dtype=torch.int64, device=tokens.device)
    parents = eagle_candidate_parents(topk, depth, expanded)
    return DraftCandidates(tokens=tokens, parents=parents, scores=scores)
