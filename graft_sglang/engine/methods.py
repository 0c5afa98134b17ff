"""Decoding methods of the offline engine, selectable by name.

A method is a mode's ``recipe.Recipe`` (tree settings, retrieval plan and sources, stop rule:
the same recipe the SGLang plugin serves for ``graft`` / ``graft-paper``) plus how the engine
drafts (width, depth) and verifies (a fixed or a trimmed width). Every method runs through the
same step (``step.GraftStep``) and the same verification.
"""

from __future__ import annotations

from dataclasses import dataclass

from graft_sglang.cost.policy import CostPolicy
from graft_sglang.recipe import BASELINES, PAPER_MODES, Recipe, make_recipe
from graft_sglang.stages import StagePolicy

METHODS = ("autoregressive", *BASELINES, "graft")


@dataclass(frozen=True)
class Method:
    """One decoding method.

    name:       one of ``METHODS`` or ``PAPER_MODES``.
    draft:      whether a drafter proposes candidates.
    topk/depth: the EAGLE-2 draft loop's width and maximum depth.
    recipe:     the mode's recipe (``None`` only for ``autoregressive``: the tree is the root).
    trim:       verify only the real (non-filler) nodes: a tree of variable size.
    """

    name: str
    draft: bool = False
    topk: int = 1
    depth: int = 1
    recipe: Recipe | None = None
    trim: bool = False

    @property
    def retrieval(self) -> str | None:
        return None if self.recipe is None else self.recipe.retrieval

    @property
    def stages(self) -> StagePolicy | None:
        return None if self.recipe is None else self.recipe.stages


def make_method(
    name: str, budget: int = 32, topk: int = 4, depth: int = 6, threshold: float = 0.1,
    vocab_size: int | None = None, retrieval: str | None = None, draft_anchors: int = 1,
    stages: StagePolicy | None = None, early_stop: bool = True, fixed_width: bool = False,
    cost: CostPolicy | None = None,
) -> Method:
    """Method ``name`` for trees of ``budget`` nodes (root included).

    ``chain``: ``budget - 1`` drafts with topk 1. ``dense``: the ``budget - 1`` most confident
    candidates of the EAGLE-2 loop (SGLang's EAGLE-2). ``pruned``: candidates below
    ``threshold`` dropped, no retrieval, variable size. ``retrieval``: the budget filled from
    retrieval below the root. ``graft``: pruned below ``threshold``, freed slots grafted with
    retrieved continuations below the root and the ``draft_anchors`` best kept draft leaves.
    The paper modes: ``recipe.make_recipe``. ``retrieval``: the source(s) (default the mode's
    own); ``stages``: the checkpoints; ``cost``: the cost-aware decisions (default off;
    ``recipe.make_recipe``).

    ``fixed_width``: verify all ``budget`` nodes, filler included (SGLang's fixed width for CUDA
    graphs); by default the engine verifies only the real nodes, since a CPU forward's cost grows
    with every node (``pruned`` always trims: its tree size varies by design).
    """
    if name not in METHODS + PAPER_MODES:
        raise ValueError(f"method must be one of {', '.join(METHODS + PAPER_MODES)}, "
                         f"got {name!r}")
    if budget < 2:
        raise ValueError(f"budget must be >= 2, got {budget}")
    if topk < 1 or depth < 1:
        raise ValueError(f"topk and depth must be >= 1, got {topk} and {depth}")
    if name == "autoregressive":
        return Method(name)
    recipe = make_recipe(name, budget, threshold=threshold, retrieval=retrieval,
                         draft_anchors=draft_anchors, stages=stages, early_stop=early_stop,
                         vocab_size=vocab_size, cost=cost)
    trim = not fixed_width or name == "pruned"
    if name == "chain":
        return Method(name, True, 1, budget - 1, recipe, trim)
    if name == "retrieval":
        return Method(name, recipe=recipe, trim=trim)
    return Method(name, True, topk, depth, recipe, trim)
