"""Stop-drafting checkpoints inside SGLang's own draft loop.

SGLang's ``EagleDraftWorker.draft_forward`` calls the module-level ``select_top_k_tokens`` once
per draft level, right before that level's draft forward pass. ``CheckpointedSelect`` wraps it:
after level ``i`` is selected it records the level's candidates and, when every request of the
batch has stopped (a graft-paper checkpoint fired for it, or in graft mode its best path fell
below the pruning threshold, which would prune everything deeper), raises ``StopDrafting``.
``GraftDraftWorker`` catches it and returns the candidates drafted so far: the remaining draft
forward passes are never run. A cost-aware step's planned depth stops the loop the same way.

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

from graft_sglang.stages import StopRule

SelectTopK = Callable[..., tuple[Any, Any, Any, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]


class StopDrafting(Exception):
    """Every request of the batch stopped after ``level``."""

    def __init__(self, level: int) -> None:
        super().__init__(f"drafting stopped after level {level}")
        self.level = level


class CheckpointedSelect:
    """Drop-in for ``select_top_k_tokens(i, topk_p, topk_index, hidden_states, scores, topk)``
    that records each level's ``tree_info`` and raises ``StopDrafting`` when the whole batch has
    stopped (the recipe's ``StopRule``, the engine's too). One instance per draft loop
    (``lists`` are its score / token / parent lists). ``decide``: [bs] bool (which requests
    stopped) -> whether the loop stops; every TP rank must return the same answer (default: all
    of them stopped). ``levels``: a planned depth (the cost-aware draft plan): the loop stops
    after that many levels whatever the rule says, with no host read (None: the rule alone)."""

    def __init__(self, select: SelectTopK, num_steps: int, rule: StopRule,
                 decide: Callable[[torch.Tensor], bool] = lambda stopped: bool(stopped.all()),
                 levels: int | None = None) -> None:
        if levels is not None and levels < 1:
            raise ValueError(f"a draft loop selects at least level 0, got levels={levels}")
        self.select = select
        self.levels = levels
        self.decide = decide
        self.num_steps = num_steps
        self.rule = rule
        self.lists: tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] = (
            [], [], [])
        self.stage: torch.Tensor | None = None  # [bs] int64, -1: not stopped by a checkpoint

    def __call__(self, i: int, topk_p: torch.Tensor, topk_index: torch.Tensor,
                 hidden_states: torch.Tensor, scores: torch.Tensor | None, topk: int) -> tuple:
        out = self.select(i, topk_p, topk_index, hidden_states, scores, topk)
        tree_info = out[3]
        for target, value in zip(self.lists, tree_info, strict=True):
            target.append(value)
        if self.levels is not None and i + 1 >= self.levels and i < self.num_steps - 1:
            raise StopDrafting(i)  # the planned depth: the passes below it are not run
        if not self.rule.worth_checking(i, self.num_steps):  # a host read saves nothing
            return out
        best = tree_info[0].flatten(1).amax(dim=1)  # [bs] the level's best path confidence
        if self.stage is None:
            self.stage = torch.full_like(best, -1, dtype=torch.int64)
        self.stage, stopped = self.rule.after_level(self.stage, i, best)
        if self.decide(stopped):  # the one host read of the level
            raise StopDrafting(i)
        return out


def capturing() -> bool:
    """Whether SGLang is capturing a graph, its eager warm-ups included
    (``get_is_capture_mode``), or a CUDA stream is capturing: the loop runs whole (no host
    reads, and the path the graph records)."""
    return get_is_capture_mode() or (torch.cuda.is_available()
                                     and torch.cuda.is_current_stream_capturing())
