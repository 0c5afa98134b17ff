"""One recipe per decoding mode: what the offline engine and the SGLang plugin build a step from.

A ``Recipe`` is everything a mode decides: the tree builder's settings (``GraftConfig``), the
suffix retrieval plan (``RetrievalPlan``), the retrieval sources, the stop rule of the draft
loop (``StopRule``: checkpoints and graft's early stop) and the successor table's shape.
``make_recipe`` is the only place that maps a mode name and its knobs to one: the engine
(``engine/methods.py::make_method``) and the plugin (``plugin/settings.py::GraftSettings.recipe``)
both call it, and both run the result through ``step.GraftStep``.

Modes: the baselines ``chain`` / ``dense`` (the draft alone), ``pruned`` (pruned draft, no
retrieval), ``retrieval`` (retrieval alone), ``graft`` (per-node pruning, retrieval below the
root and the best kept draft leaves, trie merge), the paper's ``graft-paper`` (stop-drafting
checkpoints, per-request stage split, successor table) and its ablations (graft-paper-notes.md):
``graft-noprune`` (the deepest stage's split always, no confidence trigger), ``graft-root``
(retrieval at the root takes a fixed half, no pruning), ``graft-tail`` (retrieval only after the
best kept draft path). The plugin serves ``MODES``.

A recipe may be cost-aware (``cost.policy.CostPolicy``: each step verifies the prefix of its
tree, and drafts the levels, that maximise expected tokens per unit of time); by default every
recipe verifies its whole tree. Only the offline engine acts on the policy so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from graft_sglang.calibration import DEFAULT_THRESHOLD
from graft_sglang.cost.policy import CostPolicy
from graft_sglang.retrieval.base import RetrievalPlan
from graft_sglang.retrieval.successor import PAPER_WIDTHS
from graft_sglang.stages import StagePolicy, StopRule
from graft_sglang.tree.builder import GraftConfig

MODES = ("graft", "graft-paper")
ABLATIONS = ("graft-noprune", "graft-root", "graft-tail")
PAPER_MODES = ("graft-paper", *ABLATIONS)
BASELINES = ("chain", "dense", "pruned", "retrieval")
RECIPES = (*BASELINES, "graft", *PAPER_MODES)
RETRIEVAL_SOURCES = ("suffix", "successor", "both")
NO_RETRIEVAL = RetrievalPlan(0, 0, 0)
# Each mode's own retrieval source (None: none); only these modes take another one.
OWN_SOURCE = {"chain": None, "dense": None, "pruned": None, "retrieval": "suffix",
               "graft": "suffix", "graft-paper": "successor", "graft-noprune": "successor",
               "graft-root": "suffix", "graft-tail": "suffix"}
_SOURCE_CHOICE = ("retrieval", "graft", "graft-paper")


@dataclass(frozen=True)
class Recipe:
    """One mode (see module docstring).

    name:             the mode, one of ``RECIPES``.
    config:           the tree builder's settings (``check_inputs`` is the step's choice).
    plan:             suffix queries per step (``NO_RETRIEVAL`` without the suffix source).
    retrieval:        ``"suffix"``, ``"successor"``, ``"both"`` (their slots compete) or None.
    stop:             when the draft loop stops; its checkpoints set per-request draft quotas.
    successor_k:      next tokens kept per token by the successor table.
    successor_widths: the successor table's walk, level by level.
    cost:             the cost-aware decisions (verify width, draft depth) of each step.
    """

    name: str
    config: GraftConfig
    plan: RetrievalPlan = NO_RETRIEVAL
    retrieval: str | None = None
    stop: StopRule = field(default_factory=StopRule)
    successor_k: int = 10
    successor_widths: tuple[int, ...] = PAPER_WIDTHS
    cost: CostPolicy = field(default_factory=lambda: CostPolicy(enabled=False))

    @property
    def stages(self) -> StagePolicy | None:
        return self.stop.policy

    @property
    def uses_suffix(self) -> bool:
        return self.retrieval in ("suffix", "both")

    @property
    def uses_successor(self) -> bool:
        return self.retrieval in ("successor", "both")

    def draft_quotas(self, scores: torch.Tensor, topk: int) -> torch.Tensor | None:
        """Per-request draft quotas [bs] int64 from a finished draft loop's scores [bs, M]
        (SGLang's layout, ``topk`` wide): each request's checkpoint stage split, the whole
        budget where none fired; None without checkpoints. Device ops, no host read."""
        policy = self.stop.policy
        if policy is None:
            return None
        return policy.draft_quotas(policy.stages_from_scores(scores, topk), self.config.budget)


def make_recipe(
    name: str, budget: int, *, threshold: float | None = DEFAULT_THRESHOLD,
    relative: float | None = None, retrieval_weight: float = 1.0, retrieval: str | None = None,
    root_nodes: int | None = None, draft_anchors: int = 1, anchor_nodes: int | None = None,
    stages: StagePolicy | None = None, early_stop: bool = True, successor_k: int = 10,
    vocab_size: int | None = None, cost: CostPolicy | None = None,
) -> Recipe:
    """The recipe of mode ``name`` for trees of ``budget`` nodes (root included).

    threshold / relative / retrieval_weight: ``GraftConfig``'s, where the mode prunes by
        confidence (``pruned``, ``graft``, ``graft-tail``); threshold is also graft's early stop
        (``early_stop``).
    retrieval: the source(s), default the mode's own (``retrieval`` / ``graft``: suffix,
        ``graft-paper``: successor); only those three modes take another.
    root_nodes / draft_anchors / anchor_nodes: the suffix plan (defaults ``budget - 1`` below
        the root, ``max(1, budget // 4)`` below each anchor).
    stages: the checkpoints (``graft-paper`` / ``graft-noprune``: default ``StagePolicy()``;
        ``graft``: optional, on top of per-node pruning).
    cost: the cost-aware decisions; default off (the whole tree, every draft level).
    Raises ValueError naming the argument and its allowed values.
    """
    if name not in RECIPES:
        raise ValueError(f"mode must be one of {', '.join(RECIPES)}, got {name!r}")
    if budget < 2:
        raise ValueError(f"budget must be >= 2, got {budget}")
    if retrieval is not None and retrieval not in RETRIEVAL_SOURCES:
        raise ValueError(f"retrieval must be one of {RETRIEVAL_SOURCES}, got {retrieval!r}")
    own = OWN_SOURCE[name]
    if retrieval is not None and retrieval != own and name not in _SOURCE_CHOICE:
        raise ValueError(f"mode {name!r} retrieves from {own or 'nothing'}; only "
                         f"{', '.join(_SOURCE_CHOICE)} take another retrieval source")
    source = retrieval or own
    k = budget - 1

    def config(threshold: float | None = None, **extra: object) -> GraftConfig:
        return GraftConfig(budget=budget, threshold=threshold, relative=relative,
                           retrieval_weight=retrieval_weight, vocab_size=vocab_size, **extra)

    plan = NO_RETRIEVAL
    if source in ("suffix", "both"):
        plan = RetrievalPlan(k if root_nodes is None else root_nodes,
                             0 if name == "retrieval" else draft_anchors,
                             max(1, budget // 4) if anchor_nodes is None else anchor_nodes)
    stop_below = threshold if early_stop else None
    if cost is None:
        cost = CostPolicy(enabled=False)
    common = {"successor_k": successor_k, "cost": cost}
    if name in ("chain", "dense"):
        return Recipe(name, config(), **common)
    if name == "pruned":
        return Recipe(name, config(threshold, top_up_pruned=False),
                      stop=StopRule(None, stop_below), **common)
    if name == "retrieval":
        return Recipe(name, config(), plan, source, **common)
    if name == "graft":
        return Recipe(name, config(threshold), plan, source, StopRule(stages, stop_below),
                      **common)
    policy = stages or StagePolicy()
    if name == "graft-paper":
        # No checkpoint fired: every slot is the draft's (EAGLE-3's dense tree); a fired stage
        # lowers the request's quota to its split and retrieval fills the rest.
        return Recipe(name, config(), plan, source, StopRule(policy, None), **common)
    if name == "graft-noprune":
        return Recipe(name, config(draft_quota=policy.draft_quota(len(policy.levels) - 1,
                                                                  budget)),
                      retrieval=source, **common)
    if name == "graft-root":
        return Recipe(name, config(draft_quota=k - k // 2), RetrievalPlan(k, 0, 0), source,
                      **common)
    return Recipe(name, config(threshold), RetrievalPlan(0, 1, k), source,
                  StopRule(None, threshold), **common)
