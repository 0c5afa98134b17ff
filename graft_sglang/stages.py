"""The paper's stop-drafting checkpoints and stage budget split ("graft-paper" mode).

At a few checkpoint levels of the draft loop, the best cumulative path confidence so far,
``c_d = max_j S_{d,j}``, is compared with that checkpoint's threshold. If it is below, drafting
stops there (no further draft forward passes: the latency saving), and the stage fixes how many
draft nodes the tree keeps; retrieval gets the rest of the budget. If no checkpoint fires, the
dense draft tree is verified as in EAGLE-3.

Paper (reconstructed, graft-paper-notes.md): checkpoints after levels 0, 1, 5 (level 0 = the
root's children, produced before any draft forward of the step), split at K = 60 of 8 / 24 / 40
draft nodes (K counts the non-root nodes: ``budget = K + 1``). Thresholds are not published;
0.35 / 0.25 / 0.15 are a third-party port's defaults, to be calibrated by measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAPER_BUDGET = 60
PAPER_DRAFT_SPLIT = (8, 24, 40)


@dataclass(frozen=True)
class StagePolicy:
    """Checkpoint levels, their thresholds and the draft share of the budget at each stage.

    levels:       draft-loop levels after which confidence is checked (ascending; level 0 =
                  the root's children).
    thresholds:   one per level, in (0, 1].
    draft_shares: one per level, the fraction of the non-root budget kept for draft nodes when
                  that checkpoint fires (paper: 8/60, 24/60, 40/60).
    """

    levels: tuple[int, ...] = (0, 1, 5)
    thresholds: tuple[float, ...] = (0.35, 0.25, 0.15)
    draft_shares: tuple[float, ...] = tuple(k / PAPER_BUDGET for k in PAPER_DRAFT_SPLIT)

    def __post_init__(self) -> None:
        if not (len(self.levels) == len(self.thresholds) == len(self.draft_shares)):
            raise ValueError("StagePolicy needs as many thresholds and draft_shares as levels")
        if list(self.levels) != sorted(set(self.levels)) or (self.levels and self.levels[0] < 0):
            raise ValueError(f"StagePolicy.levels must ascend strictly from >= 0: {self.levels}")
        for t in self.thresholds:
            if not 0.0 < t <= 1.0:
                raise ValueError(f"StagePolicy.thresholds must be in (0, 1], got {t}")
        for s in self.draft_shares:
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"StagePolicy.draft_shares must be in [0, 1], got {s}")

    def advance(self, stage: torch.Tensor, level: int, best: torch.Tensor) -> torch.Tensor:
        """The checkpoint rule, batched and on the device (no host read).

        stage: [bs] int64, the checkpoint that stopped each request so far (-1: none).
        best:  [bs], the best cumulative path confidence after draft level ``level``.
        Returns the updated stages: a request that had not stopped and is below the threshold
        of a checkpoint at ``level`` stops at that checkpoint.
        """
        if level not in self.levels:
            return stage
        index = self.levels.index(level)
        return torch.where((stage < 0) & (best < self.thresholds[index]),
                           torch.full_like(stage, index), stage)

    def stages_from_scores(self, scores: torch.Tensor, topk: int) -> torch.Tensor:
        """The stage of each request from a finished draft loop's candidate scores.

        scores: [bs, M] cumulative confidences in SGLang's draft-loop layout (level 0: ``topk``
        candidates, every later level ``topk**2``). Returns [bs] int64 (-1: none fired).
        """
        bs, m = scores.shape
        stage = torch.full((bs,), -1, dtype=torch.int64, device=scores.device)
        start, width, level = 0, topk, 0
        while start < m:
            stage = self.advance(stage, level, scores[:, start:start + width].amax(dim=1))
            start, width, level = start + width, topk * topk, level + 1
        return stage

    def draft_quota(self, stage: int, budget: int) -> int:
        """Draft nodes kept at ``stage`` for a tree of ``budget`` nodes (root included)."""
        return round(self.draft_shares[stage] * (budget - 1))

    def draft_quotas(self, stage: torch.Tensor, budget: int) -> torch.Tensor:
        """stage [bs] (-1: no checkpoint fired) -> [bs] int64 draft quotas: the stage's split,
        or the whole budget (the dense draft tree, as in EAGLE-3) where none fired."""
        quotas = [self.draft_quota(s, budget) for s in range(len(self.levels))] + [budget - 1]
        return torch.tensor(quotas, dtype=torch.int64, device=stage.device)[stage]
