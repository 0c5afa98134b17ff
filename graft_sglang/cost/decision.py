"""Per-step decisions that maximise expected tokens per unit of time (cost-aware Graft).

Two pure functions of tensors, both one decision per batch (a batch shares the draft loop and
the verify width, and the step's time is the batch's, so they maximise the batch's expected
tokens over the step's cost):

* ``choose_verify_size``: after the tree is built, how many nodes ``n`` each request verifies
  (a prefix of its selection order, so still ancestor-closed), from an allowed set of sizes
  (captured CUDA graphs); ``n = 1`` (a plain step) is always allowed.
* ``plan_draft``: before drafting, how many draft levels to run (0: none), from the level-0
  draft probabilities (free in SGLang: the draft-extend's top-k) and the tries already
  retrieved below the root.

Both read a few numbers on the host (``tolist``) and compare them in Python floats: identical
inputs give identical decisions, so every TP rank agrees without a collective. Ties go to the
smaller size / fewer levels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from graft_sglang.cost.model import CostModel


def allowed_sizes(sizes: Sequence[int] | None, budget: int) -> list[int]:
    """The verify widths to choose from: ``sizes`` (all of 1..budget if None) cut at
    ``budget``, with 1 always included, ascending."""
    if sizes is None:
        return list(range(1, budget + 1))
    if any(int(s) < 1 for s in sizes):
        raise ValueError(f"tree sizes must be >= 1, got {list(sizes)}")
    return sorted({1, *(int(s) for s in sizes if int(s) <= budget)})


def selection_order(reach: torch.Tensor) -> torch.Tensor:
    """[bs, N] reach (``acceptance.reach_probabilities``: root 1, nonincreasing along paths)
    -> [bs, N] int64 node indices by descending reach, ties by lower index; the root comes
    first and every prefix is ancestor-closed. O(bs * N log N)."""
    key = reach.float().clone()
    key[:, 0] = 2.0  # above any probability, so a node tied with the root never precedes it
    return torch.sort(key, dim=1, descending=True, stable=True).indices


def expected_by_size(reach: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """[bs, N] -> [bs, N]: column ``n - 1`` = expected tokens when verifying the first ``n``
    nodes of ``order`` (the root's 1 is the bonus token)."""
    return torch.gather(reach.float(), 1, order).cumsum(dim=1)


@dataclass(frozen=True)
class VerifyChoice:
    """size: nodes per request to verify (1 = a plain step); order: [bs, N] the selection
    order whose first ``size`` nodes are verified (``tree.subtree.keep_prefix``);
    expected: [bs] expected tokens per request at ``size``; cost: the step's cost (``sunk``
    included); rate: the batch's expected tokens / cost."""

    size: int
    order: torch.Tensor
    expected: torch.Tensor
    cost: float
    rate: float


def _best_size(totals: Sequence[float], sizes: Sequence[int],
               step_cost: Callable[[int], float]) -> tuple[int, float, float]:
    """(size, step cost, rate) with the highest totals[i] / step_cost(sizes[i]); ties: the
    smaller size."""
    best = (sizes[0], 0.0, -1.0)
    for size, total in zip(sizes, totals, strict=True):
        step = step_cost(size)
        rate = total / step
        if rate > best[2]:
            best = (size, step, rate)
    return best


def choose_verify_size(reach: torch.Tensor, cost: CostModel, sizes: Sequence[int] | None = None,
                       sunk: float = 0.0) -> VerifyChoice:
    """How many nodes to verify this step.

    reach: [bs, N] reach probabilities of a built tree (root 1, nonincreasing along paths).
    sizes: the allowed widths (None: any); ``sunk``: cost already paid this step (draft
    passes, retrieval and build: ``cost.draft_cost(bs, passes) + cost.overhead(bs)``), the
    same for every size. Maximises sum_b E_b(n) / (sunk + verify(bs, n)). O(bs * N log N).
    """
    if reach.dim() != 2 or reach.shape[1] < 1:
        raise ValueError(f"reach must be [bs, N] with N >= 1, got {tuple(reach.shape)}")
    if sunk < 0:
        raise ValueError(f"sunk must be >= 0, got {sunk}")
    bs, n = reach.shape
    choices = allowed_sizes(sizes, n)
    order = selection_order(reach)
    by_size = expected_by_size(reach, order)
    cols = torch.tensor([s - 1 for s in choices], device=reach.device)
    totals = by_size.index_select(1, cols).double().sum(dim=0).tolist()
    size, step, rate = _best_size(totals, choices, lambda m: sunk + cost.verify_cost(bs, m))
    return VerifyChoice(size, order, by_size[:, size - 1], step, rate)


def trie_depths(parents: torch.Tensor) -> torch.Tensor:
    """[bs, R] parent links of tries hanging below the root (``-1``: the root, else an earlier
    slot) -> [bs, R] int64 depths, 1 = a root child. R small device ops, O(bs * R)."""
    depth = torch.ones(parents.shape, dtype=torch.int64, device=parents.device)
    for j in range(1, parents.shape[1]):
        up = parents[:, j].clamp(0, j - 1)
        depth[:, j] = torch.where(parents[:, j] >= 0, depth[:, :j].gather(
            1, up[:, None])[:, 0] + 1, 1)
    return depth


def depth_mass(values: torch.Tensor, depth: torch.Tensor, valid: torch.Tensor, levels: int
               ) -> torch.Tensor:
    """Sum of ``values`` per tree depth: values, depth (1 = a root child), valid [bs, R] ->
    [bs, levels] (column ``l`` = depth ``l + 1``; deeper nodes are left out)."""
    keep = valid & (depth >= 1) & (depth <= levels)
    out = torch.zeros(values.shape[0], levels + 1, dtype=torch.float32, device=values.device)
    index = torch.where(keep, depth - 1, torch.full_like(depth, levels))
    out.scatter_add_(1, index, torch.where(keep, values.float(), 0.0))
    return out[:, :levels]


@dataclass(frozen=True)
class DraftPlan:
    """levels: draft levels to run (0: no draft at all); passes: draft forward passes they
    cost; size: the verify width the plan expects to use; expected: predicted batch expected
    tokens; cost: predicted step cost; rate: expected / cost."""

    levels: int
    passes: int
    size: int
    expected: float
    cost: float
    rate: float


def plan_draft(
    cost: CostModel, level0: torch.Tensor, retrieved: torch.Tensor, retrieved_depth: torch.Tensor,
    retrieved_valid: torch.Tensor, *, level_options: Sequence[int], decay: float,
    level0_passes: int, budget: int, sizes: Sequence[int] | None = None,
) -> DraftPlan:
    """How many draft levels to run this step (one decision per batch).

    level0:          [bs, K] calibrated reach of the draft's level-0 candidates (the root's
                     top-K draft probabilities), or a prior (e.g. their running mean).
    retrieved:       [bs, R] calibrated reach of the nodes retrieved below the root, with
                     ``retrieved_depth`` [bs, R] (1 = a root child) and ``retrieved_valid``.
    level_options:   the level counts allowed (e.g. ``range(depth + 1)``), 0 = no draft.
    decay:           predicted ratio of the draft's reach mass at one depth to the previous
                     depth's, in (0, 1] (measured: ``bench/score_calibration.py``).
    level0_passes:   draft passes level 0 costs: 0 where it comes free with the previous
                     step (SGLang's draft extend), 1 where it needs its own pass (the engine).
                     Level ``l >= 1`` costs one pass each.

    Prediction: drafting ``d`` levels proposes, at depth ``l < d``, the level-0 candidates
    scaled by ``decay**l``; where the retrieved mass at a depth exceeds the draft's, the
    retrieved nodes stand for that depth instead (they mostly propose the same tokens, so the
    larger source is counted, not the sum). The predicted nodes are ranked as a built tree
    would be and sized by ``choose_verify_size``'s rule with the plan's draft passes as sunk
    cost; ``cost.overhead`` is charged to every speculative step (``d > 0`` or a verify of
    more than the root), so ``d = 0`` at size 1 is a plain step.
    O(|level_options| * bs * (K d + R) log).
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if level0_passes not in (0, 1):
        raise ValueError(f"level0_passes must be 0 or 1, got {level0_passes}")
    options = sorted({int(d) for d in level_options})
    if not options or options[0] < 0:
        raise ValueError(f"level_options must be levels >= 0, got {list(level_options)}")
    bs = level0.shape[0]
    device = level0.device
    choices = allowed_sizes(sizes, budget)
    span = max(1, *options)  # depths the plans can draft
    draft0 = torch.sort(level0.float().clamp(0, 1), dim=1, descending=True).values
    scale = decay ** torch.arange(span, dtype=torch.float32, device=device)
    draft = draft0[:, None, :] * scale[None, :, None]  # [bs, levels, K]
    draft_mass = draft.sum(dim=2)
    retrieved_mass = depth_mass(retrieved, retrieved_depth, retrieved_valid, span)
    ones = torch.ones(bs, 1, device=device)
    levels = torch.arange(span, device=device)[None, :]
    column = (retrieved_depth - 1).clamp(0, span - 1)
    plans = []
    for d in options:
        draft_wins = (levels < d) & (draft_mass >= retrieved_mass)  # [bs, levels]
        draft_values = torch.where(draft_wins[:, :, None], draft, 0.0)
        shadowed = (retrieved_depth <= span) & torch.gather(draft_wins, 1, column)
        retrieved_values = torch.where(retrieved_valid & ~shadowed, retrieved.float(), 0.0)
        values = torch.cat([ones, draft_values.flatten(1), retrieved_values], dim=1)
        width = min(budget, values.shape[1])
        by_size = torch.sort(values, dim=1, descending=True).values[:, :width].cumsum(dim=1)
        usable = [s for s in choices if s <= width]
        cols = torch.tensor([s - 1 for s in usable], device=device)
        totals = by_size.index_select(1, cols).double().sum(dim=0).tolist()
        passes = 0 if d == 0 else level0_passes + d - 1
        draft_cost = cost.draft_cost(bs, passes)

        def step_cost(size: int, d: int = d, draft_cost: float = draft_cost) -> float:
            speculative = d > 0 or size > 1
            return (draft_cost + cost.verify_cost(bs, size)
                    + (cost.overhead(bs) if speculative else 0.0))

        size, step, rate = _best_size(totals, usable, step_cost)
        plans.append(DraftPlan(d, passes, size, totals[usable.index(size)], step, rate))
    return max(plans, key=lambda plan: plan.rate)  # max keeps the first of equal rates
