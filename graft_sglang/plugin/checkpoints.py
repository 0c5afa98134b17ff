"""Stop-drafting checkpoints inside SGLang's own draft loop.

SGLang's ``EagleDraftWorker.draft_forward`` calls the module-level ``select_top_k_tokens`` once
per draft level, right before that level's draft forward pass. ``CheckpointedSelect`` wraps it:
after level ``i`` is selected it records the level's candidates and, when every request of the
batch has stopped (a graft-paper checkpoint fired for it, or in graft mode its best path fell
below the pruning threshold, which would prune everything deeper), raises ``StopDrafting``.
``GraftDraftWorker`` catches it and returns the candidates drafted so far: the remaining draft
forward passes are never run.

The decision reads one boolean per checked level on the host (the batch's control flow depends
on it). Every TP rank must take it alike, since each draft forward it skips is a collective: the
loop's inputs are the same on every rank (``plugin/tp.py``), and with the TP broadcast switch
(ranks that may draft differently) rank 0's decision is broadcast (``decide``). In SGLang's
graph-capture mode, warm-up passes included, the loop never stops early: the warm-ups run
eagerly on zeroed static inputs and must take the path the capture records.

Which stage each request reached is not taken from here but recomputed from the returned scores
(``StagePolicy.stages_from_scores``), so a CUDA-graph replay of the full loop and an eager loop
that stopped early give every request the same split.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sglang.srt.model_executor.runner_utils.capture_mode import get_is_capture_mode

from graft_sglang.stages import StagePolicy

SelectTopK = Callable[..., tuple[Any, Any, Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


def level_stops(policy: StagePolicy | None, stop_below: float | None, stage: torch.Tensor,
                level: int, best: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The stop rule after draft level ``level``: best [bs] the level's best path confidence,
    stage [bs] the checkpoint each request stopped at so far (-1: none). Returns the updated
    stages and [bs] bool, which requests need no deeper level (a checkpoint stopped them, or
    in graft mode everything deeper would be pruned)."""
    if policy is not None:
        stage = policy.advance(stage, level, best)
    stopped = stage >= 0
    if stop_below is not None:
        stopped = stopped | (best < stop_below)
    return stage, stopped


class StopDrafting(Exception):
    """Every request of the batch stopped after ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__(f"drafting stopped after level {level}")
        self.level = level


class CheckpointedSelect:
    """Drop-in for ``select_top_k_tokens(i, topk_p, topk_index, hidden_states, scores, topk)``
    that records each level's ``tree_info`` and raises ``StopDrafting`` when the whole batch has
    stopped. One instance per draft loop (``lists`` are its score / token / parent lists).
    ``decide``: [bs] bool (which requests stopped) -> whether the loop stops; every TP rank
    must return the same answer (default: all of them stopped)."""

    def __init__(self, select: SelectTopK, num_steps: int, policy: StagePolicy | None,
                 stop_below: float | None,
                 decide: Callable[[torch.Tensor], bool] = lambda stopped: bool(stopped.all()),
                 ) -> None:
        self.select = select
        self.decide = decide
        self.num_steps = num_steps
        self.policy = policy
        self.stop_below = stop_below
        self.lists: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = (
            [], [], [])
        self.stage: torch.Tensor | None = None  # [bs] int64, -1: not stopped by a checkpoint

    def checked(self, level: int) -> bool:
        """Whether ``level`` is worth a host read: a checkpoint, or (graft mode) any level
        that still has draft forwards after it."""
        if level >= self.num_steps - 1:  # the last level: nothing left to save
            return False
        return self.stop_below is not None or (
            self.policy is not None and level in self.policy.levels)

    def __call__(self, i: int, topk_p: torch.Tensor, topk_index: torch.Tensor,
                 hidden_states: torch.Tensor, scores: torch.Tensor | None, topk: int) -> tuple:
        out = self.select(i, topk_p, topk_index, hidden_states, scores, topk)
        tree_info = out[3]
        for target, value in zip(self.lists, tree_info, strict=True):
            target.append(value)
        if not self.checked(i):  # every checkpoint level before the last is checked
            return out
        best = tree_info[0].flatten(1).amax(dim=1)  # [bs] the level's best path confidence
        if self.stage is None:
            self.stage = torch.full_like(best, -1, dtype=torch.int64)
        self.stage, stopped = level_stops(self.policy, self.stop_below, self.stage, i, best)
        if self.decide(stopped):  # the one host read of the level
            raise StopDrafting(i)
        return out


def capturing() -> bool:
    """Whether SGLang is capturing a graph, its eager warm-ups included
    (``get_is_capture_mode``), or a CUDA stream is capturing: the loop runs whole (no host
    reads, and the path the graph records)."""
    return get_is_capture_mode() or (torch.cuda.is_available()
                                     and torch.cuda.is_current_stream_capturing())
