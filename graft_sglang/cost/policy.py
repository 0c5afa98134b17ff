"""How a mode uses the cost model: the cost-aware part of a recipe (``recipe.Recipe.cost``).

``CostPolicy`` holds only what a mode decides (on or off, the allowed verify widths, a pinned
width, whether the draft depth is planned, the planner's draft decay); the cost table itself is
the machine's (``cost.model.CostModel``), handed to the step separately, so the offline engine
and the SGLang plugin build equal recipes on different machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_DECAY = 0.35
"""Predicted ratio of the draft's reach mass at one depth to the previous depth's: chosen between
the per-dataset ratios recorded in ``bench/results/score-calibration.json``."""


def power_of_two_sizes(budget: int) -> tuple[int, ...]:
    """1, 2, 4, ... below ``budget``, and ``budget`` itself: few widths (one captured graph set
    each in SGLang), at most a factor two apart."""
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    sizes = {budget}
    size = 1
    while size < budget:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class CostPolicy:
    """The cost-aware decisions of a step.

    enabled:      size each step's verification (and plan its draft) to maximise expected
                  tokens per unit of time; False: verify the whole tree and draft every level.
    verify_sizes: the widths a step may verify (1 is always allowed); None: powers of two up
                  to the budget and the budget (``power_of_two_sizes``).
    fixed_size:   verify exactly this many nodes per request every step (the best prefix by
                  reach; cut at the budget), no cost model needed; None: choose per step.
    plan_draft:   decide before drafting how many draft levels to run (0: none), from the
                  level-0 draft confidences and the tries retrieved at the root.
    decay:        the planner's draft mass ratio between consecutive depths, in (0, 1].
    Raises ValueError naming the field for a value outside its range.
    """

    enabled: bool = True
    verify_sizes: tuple[int, ...] | None = None
    fixed_size: int | None = None
    plan_draft: bool = True
    decay: float = DEFAULT_DECAY

    def __post_init__(self) -> None:
        if self.verify_sizes is not None:
            if not self.verify_sizes or any(int(s) < 1 for s in self.verify_sizes):
                raise ValueError(f"verify_sizes must be widths >= 1, got {self.verify_sizes}")
            object.__setattr__(self, "verify_sizes",
                               tuple(sorted({1, *(int(s) for s in self.verify_sizes)})))
        if self.fixed_size is not None and self.fixed_size < 1:
            raise ValueError(f"fixed_size must be >= 1, got {self.fixed_size}")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")

    @property
    def sizes_verified(self) -> bool:
        """Whether steps verify fewer nodes than the whole tree at all."""
        return self.enabled or self.fixed_size is not None

    @property
    def needs_costs(self) -> bool:
        """Whether decisions read a cost model (a pinned width does not)."""
        return self.enabled and self.fixed_size is None

    @property
    def plans_draft(self) -> bool:
        return self.needs_costs and self.plan_draft

    def sizes(self, budget: int) -> tuple[int, ...]:
        """The widths a tree of ``budget`` nodes may be verified at, ascending, 1 first: a
        pinned width alone (and 1), else ``verify_sizes`` cut at ``budget`` (default
        ``power_of_two_sizes``)."""
        if self.fixed_size is not None:
            return tuple(sorted({1, min(self.fixed_size, budget)}))
        chosen: Sequence[int] = (power_of_two_sizes(budget) if self.verify_sizes is None
                                 else self.verify_sizes)
        return tuple(sorted({1, *(s for s in chosen if s <= budget)}))
