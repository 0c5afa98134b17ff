"""The paper's stop-drafting checkpoints and stage budget split ("graft-paper" mode).

At a few checkpoint levels of the draft loop, the best cumulative path confidence so far,
``c_d = max_j S_{d,j}``, is compared with that checkpoint's threshold. If it is below, drafting
stops there (no further draft forward passes: the latency saving), and the stage fixes how many
draft nodes the tree keeps; retrieval gets the rest of the budget. If no checkpoint fires, the
dense draft tree is verified as in EAGLE-3.

Paper (as reconstructed from its text): checkpoints after levels 0, 1, 5 (level 0 = the root's
children, produced before any draft forward of the step), split at K = 60 of 8 / 24 / 40 draft
nodes (K counts the non-root nodes: ``budget = K + 1``). Thresholds are not published;
0.35 / 0.25 / 0.15 are a third-party port's defaults, calibrated per draft head by
``bench/calibrate.py`` (the head's ``calibration.json``).
"""

from __future__ import annotations

from collections.abc import Callable
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


@dataclass(frozen=True)
class StopRule:
    """When a draft loop stops: the one rule of the engine's drafters and SGLang's loop.

    policy:     the paper's checkpoints (a request whose checkpoint fired stops), or None.
    stop_below: graft's early stop: a request whose best path confidence after a level is below
                it stops (every deeper node would be pruned), or None.
    """

    policy: StagePolicy | None = None
    stop_below: float | None = None

    @property
    def active(self) -> bool:
        """Whether a loop may stop before its last level at all."""
        return self.policy is not None or self.stop_below is not None

    def after_level(self, stage: torch.Tensor, level: int,
                    best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """best [bs] the best path confidence after draft level ``level``, stage [bs] int64 the
        checkpoint each request stopped at so far (-1: none). Returns the updated stages and
        [bs] bool, the requests that need no deeper level. Device ops, no host read."""
        if self.policy is not None:
            stage = self.policy.advance(stage, level, best)
        stopped = stage >= 0
        if self.stop_below is not None:
            stopped = stopped | (best < self.stop_below)
        return stage, stopped

    def worth_checking(self, level: int, num_levels: int) -> bool:
        """Whether deciding after ``level`` (of a loop of ``num_levels``) can save a draft pass:
        a checkpoint level, or in graft mode any level but the last."""
        if level >= num_levels - 1:
            return False
        return self.stop_below is not None or (
            self.policy is not None and level in self.policy.levels)

    def for_one_request(self) -> Callable[[int, float], bool]:
        """A fresh ``stop(level, best)`` callback for one request's draft loop (the offline
        engine's drafters): True once that request stopped."""
        stage = torch.full((1,), -1, dtype=torch.int64)

        def stop(level: int, best: float) -> bool:
            nonlocal stage
            stage, stopped = self.after_level(stage, level, torch.tensor([best]))
            return bool(stopped[0])

        return stop
