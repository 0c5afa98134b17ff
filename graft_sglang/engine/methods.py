"""Decoding methods of the offline engine, selectable by name.

Every method is one ``Method``: whether it drafts, how wide and deep the draft loop goes, which
tree-builder settings shape the verified tree, and which retrieval source fills it. All of them
run through the same tree builder (``build_graft_tree``) and the same verification.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graft_sglang.proposer import RetrievalPlan
from graft_sglang.stages import StagePolicy
from graft_sglang.tree.builder import GraftConfig

METHODS = ("autoregressive", "chain", "dense", "pruned", "retrieval", "graft")
# The paper's recipe and its ablations (graft-paper-notes.md): stop-drafting checkpoints with a
# stage budget split and the successor table; ROOT (retrieval at the root takes a fixed share,
# no pruning); TAIL (retrieval only after the best kept draft path); w/o prune (the deepest
# stage's split always, no confidence trigger).
PAPER_MODES = ("graft-paper", "graft-noprune", "graft-root", "graft-tail")
RETRIEVAL_SOURCES = ("suffix", "successor", "both")


@dataclass(frozen=True)
class Method:
    """One decoding method.

    name:       one of ``METHODS``.
    draft:      whether a drafter proposes candidates.
    topk/depth: the EAGLE-2 draft loop's width and maximum depth.
    config:     tree-builder settings (``None`` only for ``autoregressive``: the tree is the root).
    plan:       suffix-retrieval requests per step.
    retrieval:  ``"suffix"``, ``"successor"``, ``"both"`` (their slots compete) or ``None``.
    stages:     the paper's stop-drafting checkpoints (``None``: none).
    stop_below: stop drafting after a level whose best path confidence is below this: every
                deeper node would be pruned, so the draft forward passes are saved.
    trim:       verify only the real (non-filler) nodes: a tree of variable size.
    """

    name: str
    draft: bool = False
    topk: int = 1
    depth: int = 1
    config: GraftConfig | None = None
    plan: RetrievalPlan = field(default_factory=lambda: RetrievalPlan(0, 0, 0))
    retrieval: str | None = None
    stages: StagePolicy | None = None
    stop_below: float | None = None
    trim: bool = False


def make_method(
    name: str, budget: int = 32, topk: int = 4, depth: int = 6, threshold: float = 0.1,
    vocab_size: int | None = None, retrieval: str = "suffix", draft_anchors: int = 1,
    stages: StagePolicy | None = None, early_stop: bool = True, fixed_width: bool = False,
) -> Method:
    """Method ``name`` for trees of ``budget`` nodes (root included).

    ``chain``: ``budget - 1`` drafts with topk 1. ``dense``: the ``budget - 1`` most confident
    candidates of the EAGLE-2 loop (SGLang's EAGLE-2). ``pruned``: candidates below
    ``threshold`` dropped, no retrieval, variable size. ``retrieval``: the budget filled from
    retrieval below the root. ``graft``: pruned below ``threshold``, freed slots grafted with
    retrieved continuations below the root and the ``draft_anchors`` best kept draft leaves.

    ``stages``: the paper modes' checkpoint policy (default ``StagePolicy()``, uncalibrated
    thresholds); for ``graft``, optional checkpoints on top of per-node pruning.

    ``fixed_width``: verify all ``budget`` nodes, filler included (SGLang's fixed width for CUDA
    graphs); by default the engine verifies only the real nodes, since a CPU forward's cost grows
    with every node (``pruned`` always trims: its tree size varies by design).
    """
    if name not in METHODS + PAPER_MODES:
        raise ValueError(f"method must be one of {', '.join(METHODS + PAPER_MODES)}, "
                         f"got {name!r}")
    if retrieval not in RETRIEVAL_SOURCES:
        raise ValueError(f"retrieval must be one of {RETRIEVAL_SOURCES}, got {retrieval!r}")
    if budget < 2:
        raise ValueError(f"budget must be >= 2, got {budget}")
    if topk < 1 or depth < 1:
        raise ValueError(f"topk and depth must be >= 1, got {topk} and {depth}")
    if name == "autoregressive":
        return Method(name)
    dense = GraftConfig(budget=budget, threshold=None, vocab_size=vocab_size)
    trim = not fixed_width
    if name == "chain":
        return Method(name, True, 1, budget - 1, dense, trim=trim)
    if name == "dense":
        return Method(name, True, topk, depth, dense, trim=trim)
    stop_below = threshold if early_stop else None
    if name == "pruned":
        config = GraftConfig(budget=budget, threshold=threshold, top_up_pruned=False,
                             vocab_size=vocab_size)
        return Method(name, True, topk, depth, config, stop_below=stop_below, trim=True)
    if name == "retrieval":
        return Method(name, config=dense, plan=RetrievalPlan(budget - 1, 0, 0),
                      retrieval=retrieval, trim=trim)
    if name in PAPER_MODES:
        return _paper_mode(name, budget, topk, depth, threshold, vocab_size, trim,
                           stages or StagePolicy())
    config = GraftConfig(budget=budget, threshold=threshold, vocab_size=vocab_size)
    plan = RetrievalPlan(budget - 1, draft_anchors, max(1, (budget - 1) // 4))
    return Method(name, True, topk, depth, config, plan, retrieval, stages, stop_below, trim)


def _paper_mode(name: str, budget: int, topk: int, depth: int, threshold: float,
                vocab_size: int | None, trim: bool, policy: StagePolicy) -> Method:
    k = budget - 1
    if name == "graft-paper":
        # No checkpoint fired: every slot is the draft's (EAGLE-3's dense tree); a fired stage
        # lowers the quota to its split and the successor table fills the rest.
        config = GraftConfig(budget=budget, threshold=None, draft_quota=k,
                             vocab_size=vocab_size)
        return Method(name, True, topk, depth, config, retrieval="successor", stages=policy,
                      trim=trim)
    if name == "graft-noprune":
        config = GraftConfig(budget=budget, threshold=None,
                             draft_quota=policy.draft_quota(len(policy.levels) - 1, budget),
                             vocab_size=vocab_size)
        return Method(name, True, topk, depth, config, retrieval="successor", trim=trim)
    if name == "graft-root":
        config = GraftConfig(budget=budget, threshold=None, draft_quota=k - k // 2,
                             vocab_size=vocab_size)
        return Method(name, True, topk, depth, config, RetrievalPlan(k, 0, 0), "suffix",
                      trim=trim)
    config = GraftConfig(budget=budget, threshold=threshold, vocab_size=vocab_size)
    return Method(name, True, topk, depth, config, RetrievalPlan(0, 1, k), "suffix",
                  stop_below=threshold, trim=trim)
