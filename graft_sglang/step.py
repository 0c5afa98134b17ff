"""One Graft step for a batch: anchors, one batched retrieval call per source, the tree build.

The offline engine and the SGLang worker both build their trees with ``GraftStep`` (from the
same ``recipe.Recipe``): (roots, seq_lens, draft, per-request quotas) -> tree. Only how draft
candidates are produced and how the tree is verified differ between them.

Host traffic per step, with value checks off (``check_inputs=False``, a server's setting):
no scalar read; at most one device-to-host copy, what the suffix source needs to see (the
anchors and the draft's tokens and parents, stacked, only when the plan has draft anchors);
the successor walk and the compiled tree build (``tree.kernel.build_graft_tree_fast``, which
may also write the verify mask into a caller's buffer) stay on the device.

Cost-aware steps (the recipe's ``cost.policy.CostPolicy``, with the machine's
``cost.model.CostModel`` in ``GraftStep.cost``) add two decisions, both functions of the step's
tensors alone (every TP rank takes the same one): ``plan`` before drafting (how many draft levels,
from the level-0 draft confidences and the tries retrieved at the root, ``retrieve_root``), and
``size`` after the build (how many nodes to verify: the best prefix of the tree by reach
probability). Each reads a few numbers on the host.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import torch

from graft_sglang.cost.acceptance import reach_probabilities
from graft_sglang.cost.decision import (
    DraftPlan,
    VerifyChoice,
    choose_verify_size,
    plan_draft,
    selection_order,
    trie_depths,
)
from graft_sglang.cost.model import CostModel
from graft_sglang.recipe import Recipe
from graft_sglang.retrieval.base import (
    PackedRetrievalSource,
    RetrievalPlan,
    StepQuery,
    StepRetrieval,
    SuffixQueries,
)
from graft_sglang.retrieval.successor import SuccessorTable
from graft_sglang.tree.builder import GraftConfig, GraftTree, prune_mask
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.kernel import build_graft_tree_fast
from graft_sglang.tree.layout import TreeMaskMode
from graft_sglang.tree.retrieved import RetrievedCandidates, concat_retrieved
from graft_sglang.tree.subtree import keep_prefix


def draft_anchors(draft: DraftCandidates, config: GraftConfig, count: int,
                  draft_quotas: torch.Tensor | None = None) -> torch.Tensor:
    """Per request, up to ``count`` leaves of the kept (unpruned) draft tree, best score first
    (ties: lower index), as [bs, min(count, M)] int64 on the draft's device, -1 padding.
    ``draft_quotas`` [bs] as in ``prune_mask``. Device ops only (no host read), O(bs M log M)."""
    bs, m = draft.batch_size, draft.num_candidates
    k = min(count, m)
    device = draft.scores.device
    if k == 0:
        return torch.empty(bs, 0, dtype=torch.int64, device=device)
    scores = draft.scores.float()
    kept = ~prune_mask(scores, config, draft_quotas)
    # A kept node with a kept child is not a leaf (column m absorbs the non-kept children).
    has_kept_child = torch.zeros(bs, m + 1, dtype=torch.bool, device=device)
    kept_child_parent = torch.where(kept & (draft.parents >= 0), draft.parents,
                                    torch.full_like(draft.parents, m))
    has_kept_child.scatter_(1, kept_child_parent, True)
    leaf = kept & ~has_kept_child[:, :m]
    ranked = torch.sort(torch.where(leaf, scores, torch.full_like(scores, -1.0)), dim=1,
                        descending=True, stable=True).indices[:, :k]
    real = torch.arange(k, device=device) < leaf.sum(dim=1, keepdim=True)
    return torch.where(real, ranked, torch.full_like(ranked, -1))


class GraftStep:
    """Builds one step's Graft trees for a batch and keeps its sources in step with decoding.

    recipe:       the mode (tree settings, plan, sources, stop rule).
    suffix:       the suffix retriever (any ``PackedRetrievalSource``), required when the recipe
                  uses it; it keeps its own request bookkeeping (``start`` ... ``finish``).
    successor:    the successor table, required when the recipe uses it; fed with the target's
                  logits at every verified node (``observe_verified``).
    check_inputs: the builder's and the successor table's value checks (host reads); a server
                  turns them off.
    cost:         the machine's step costs, read by cost-aware decisions (``size`` / ``plan``;
                  a server may set it once calibrated). None: not known (yet).
    Sources answer in the recipe's order (suffix slots, then successor slots) and compete for
    the budget in the builder; after a ``retrieve_root``, the root tries come first (suffix,
    successor), then the suffix tries below the draft anchors. Raises ValueError for a source
    the recipe needs and lacks, or one it does not use.
    """

    def __init__(self, recipe: Recipe, suffix: PackedRetrievalSource | None = None,
                 successor: SuccessorTable | None = None, *, check_inputs: bool = True,
                 cost: CostModel | None = None) -> None:
        for name, given, needed in (("suffix", suffix, recipe.uses_suffix),
                                    ("successor", successor, recipe.uses_successor)):
            if (given is not None) != needed:
                raise ValueError(f"mode {recipe.name!r} with retrieval {recipe.retrieval!r} "
                                 f"{'needs a' if needed else 'takes no'} {name} source")
        self.recipe = recipe
        self.config = dataclasses.replace(recipe.config, check_inputs=check_inputs)
        self.suffix = suffix
        self.successor = successor
        self.sources: tuple[StepRetrieval, ...] = tuple(
            s for s in (None if suffix is None else SuffixQueries(suffix, recipe.plan),
                        successor) if s is not None)
        self.cost = cost
        plan = recipe.plan
        # The plan split in two calls for a step that retrieves at the root before drafting.
        self._root_sources: tuple[StepRetrieval, ...] = tuple(
            s for s in (None if suffix is None else SuffixQueries(
                suffix, RetrievalPlan(plan.root_nodes, 0, 0)), successor) if s is not None)
        self._anchor_source = (None if suffix is None or not plan.draft_anchors else
                               SuffixQueries(suffix, RetrievalPlan(0, plan.draft_anchors,
                                                                   plan.anchor_nodes)))

    @classmethod
    def for_recipe(cls, recipe: Recipe, suffix: PackedRetrievalSource | None = None, *,
                   vocab_size: int | None = None, device: torch.device | str = "cpu",
                   check_inputs: bool = True, cost: CostModel | None = None) -> GraftStep:
        """The step of ``recipe``: ``suffix`` used where the recipe retrieves from it (ignored
        otherwise), a fresh successor table of ``vocab_size`` on ``device`` where it uses one
        (ValueError without ``vocab_size``), ``cost`` the machine's step costs."""
        successor = None
        if recipe.uses_successor:
            if vocab_size is None:
                raise ValueError("the successor table needs the target's vocabulary size")
            successor = SuccessorTable(vocab_size, recipe.successor_k, device=device,
                                       widths=recipe.successor_widths)
        return cls(recipe, suffix if recipe.uses_suffix else None, successor,
                   check_inputs=check_inputs, cost=cost)

    @property
    def budget(self) -> int:
        return self.config.budget

    def draft_quotas(self, draft: DraftCandidates, topk: int) -> torch.Tensor | None:
        """[bs] per-request draft quotas from the checkpoints (``Recipe.draft_quotas``)."""
        return self.recipe.draft_quotas(draft.scores, topk)

    def query(self, rids: Sequence[str], roots: torch.Tensor, draft: DraftCandidates,
              draft_quotas: torch.Tensor | None = None) -> StepQuery:
        """The step's question to its sources: the anchors (kept draft leaves of the plan) and
        the draft's tokens and parents, brought to the host in one copy when there are anchors
        and a suffix source to read them."""
        bs, m = draft.batch_size, draft.num_candidates
        count = self.recipe.plan.draft_anchors if self.suffix is not None else 0
        anchors = draft_anchors(draft, self.config, count, draft_quotas)
        a = anchors.shape[1]
        if a:
            host = torch.cat([anchors, draft.tokens.to(torch.int64),
                              draft.parents.to(torch.int64)], dim=1).cpu()  # the one copy
            anchors, tokens, parents = host.split([a, m, m], dim=1)
        else:
            anchors = torch.empty(bs, 0, dtype=torch.int64)
            tokens = parents = torch.zeros(bs, m, dtype=torch.int64)
        return StepQuery(list(rids), roots, m, anchors, tokens, parents,
                         check=self.config.check_inputs)

    def retrieve(self, rids: Sequence[str], roots: torch.Tensor, draft: DraftCandidates,
                 draft_quotas: torch.Tensor | None = None,
                 root: RetrievedCandidates | None = None) -> RetrievedCandidates:
        """Every source's candidates of the step, side by side, on ``roots.device``; ``root``:
        this step's ``retrieve_root`` answer, then only the draft anchors are queried."""
        if len(rids) != roots.shape[0]:
            raise ValueError(f"{len(rids)} request ids for a batch of {roots.shape[0]}")
        if root is not None:
            return self._below_anchors(rids, roots, draft, draft_quotas, root)
        if not self.sources:
            return RetrievedCandidates.empty(roots.shape[0], roots.device)
        query = self.query(rids, roots, draft, draft_quotas)
        out = None
        for source in self.sources:
            part = source.retrieve_step(query)
            out = part if out is None else concat_retrieved(out, part, draft.num_candidates)
        return out

    def retrieve_root(self, rids: Sequence[str], roots: torch.Tensor) -> RetrievedCandidates:
        """Every source's tries below the root alone (no draft needed yet), in the index space
        of a step without draft candidates (own slots from 0): what ``plan`` reads and
        ``retrieve(..., root=...)`` completes."""
        bs = roots.shape[0]
        if len(rids) != bs:
            raise ValueError(f"{len(rids)} request ids for a batch of {bs}")
        out = RetrievedCandidates.empty(bs, roots.device)
        empty = torch.zeros(bs, 0, dtype=torch.int64)
        query = StepQuery(list(rids), roots, 0, empty, empty, empty,
                          check=self.config.check_inputs)
        for source in self._root_sources:
            out = concat_retrieved(out, source.retrieve_step(query), 0)
        return out

    def _below_anchors(self, rids: Sequence[str], roots: torch.Tensor, draft: DraftCandidates,
                       draft_quotas: torch.Tensor | None, root: RetrievedCandidates
                       ) -> RetrievedCandidates:
        m = draft.num_candidates
        # The root tries' own links move past the draft's M candidates.
        out = RetrievedCandidates(root.tokens, torch.where(root.parents >= 0, root.parents + m,
                                                           root.parents),
                                  root.anchors, root.path_probs, root.valid)
        if self._anchor_source is None:
            return out
        query = self.query(rids, roots, draft, draft_quotas)
        return concat_retrieved(out, self._anchor_source.retrieve_step(query), m)

    def tree(
        self, roots: torch.Tensor, seq_lens: torch.Tensor, draft: DraftCandidates,
        retrieved: RetrievedCandidates, draft_quotas: torch.Tensor | None = None, *,
        mask_mode: TreeMaskMode | int | None = None, mask_out: torch.Tensor | None = None,
        seq_lens_sum: int | None = None,
    ) -> tuple[GraftTree, torch.Tensor | None]:
        """The builder on the step's candidates (``build_graft_tree_fast``: the compiled kernel
        where it runs, else the reference): (tree, mask), the mask in ``mask_mode``'s layout
        (written into ``mask_out`` when given), None without ``mask_mode``."""
        return build_graft_tree_fast(roots, seq_lens, draft, retrieved, self.config, mask_mode,
                                     seq_lens_sum, draft_quotas=draft_quotas,
                                     mask_out=mask_out)

    def build(
        self, rids: Sequence[str], roots: torch.Tensor, seq_lens: torch.Tensor,
        draft: DraftCandidates, draft_quotas: torch.Tensor | None = None, *,
        mask_mode: TreeMaskMode | int | None = None, mask_out: torch.Tensor | None = None,
        seq_lens_sum: int | None = None, root: RetrievedCandidates | None = None,
    ) -> tuple[GraftTree, torch.Tensor | None]:
        """roots [bs], seq_lens [bs], draft [bs, M], draft_quotas [bs] (or None) -> trees of
        ``budget`` nodes and their mask (see ``tree``): ``retrieve`` (completing ``root``, a
        ``retrieve_root`` answer, when given), then ``tree``."""
        retrieved = self.retrieve(rids, roots, draft, draft_quotas, root)
        return self.tree(roots, seq_lens, draft, retrieved, draft_quotas, mask_mode=mask_mode,
                         mask_out=mask_out, seq_lens_sum=seq_lens_sum)

    # -- cost-aware decisions ------------------------------------------------------------------
    def plan(self, level0: torch.Tensor, root: RetrievedCandidates, max_levels: int,
             level0_passes: int, level_options: Sequence[int] | None = None
             ) -> DraftPlan | None:
        """How many draft levels to run this step (``cost.decision.plan_draft``), or None where
        the recipe does not plan or no cost model is known.

        level0: [bs, K] the level-0 draft confidences (or a prior), root: ``retrieve_root``'s
        answer (its path probabilities weighted as the builder weighs them), max_levels: the
        draft loop's depth, level0_passes: 0 where level 0 comes with the previous step (SGLang),
        1 where it needs a pass (the engine); level_options: the level counts the drafter can
        stop after (default every one, 0 to ``max_levels``)."""
        policy = self.recipe.cost
        if not policy.plans_draft or self.cost is None:
            return None
        options = range(max_levels + 1) if level_options is None else level_options
        return plan_draft(self.cost, level0, root.path_probs * self.config.retrieval_weight,
                          trie_depths(root.parents), root.valid, level_options=options,
                          decay=policy.decay, level0_passes=level0_passes, budget=self.budget,
                          sizes=policy.sizes(self.budget))

    def size(self, tree: GraftTree, passes: int, width: int | None = None
             ) -> tuple[GraftTree, VerifyChoice | None]:
        """The nodes to verify of ``tree`` [bs, N] after ``passes`` draft passes: its first
        ``width`` nodes by reach probability where given (a forced width, e.g. a calibration's),
        else the recipe's pinned width, else ``choose_verify_size`` on the cost model (the
        sunk cost: the passes and the step's host overhead). Returns (tree, choice); the tree
        unchanged with None where the recipe verifies whole trees or no cost model is known.
        One host read of a few numbers (the expected tokens per allowed width)."""
        policy = self.recipe.cost
        budget = tree.budget
        if width is None and policy.fixed_size is not None:
            width = min(policy.fixed_size, budget)
        if width is None and (not policy.needs_costs or self.cost is None):
            return tree, None
        reach = reach_probabilities(tree)
        if width is not None:
            if not 1 <= width <= budget:
                raise ValueError(f"width must be in [1, {budget}], got {width}")
            order = selection_order(reach)
            expected = torch.gather(reach, 1, order[:, :width]).sum(dim=1)
            choice = VerifyChoice(width, order, expected, float("nan"), float("nan"))
        else:
            bs = tree.batch_size
            sunk = self.cost.draft_cost(bs, passes) + self.cost.overhead(bs)
            choice = choose_verify_size(reach, self.cost, policy.sizes(budget), sunk)
        if choice.size == budget:
            return tree, choice
        return keep_prefix(tree, choice.order, choice.size, check=self.config.check_inputs), \
            choice

    # -- keeping the sources in step -------------------------------------------------------------
    def observe_verified(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """tokens [n] the verified nodes' tokens, logits [n, V] the target's there: the
        successor table's update (rows of every verified node, accepted or not)."""
        if self.successor is not None:
            self.successor.update_from_logits(tokens, logits, check=self.config.check_inputs)

    def start(self, rid: str, prompt: Sequence[int], tenant: Hashable = None) -> None:
        if self.suffix is not None:
            self.suffix.start_request(rid, prompt, tenant)

    def commit(self, rid: str, accepted: Sequence[int]) -> None:
        """Tokens request ``rid`` committed this step (accepted drafts + bonus)."""
        if self.suffix is not None:
            self.suffix.extend_request(rid, accepted)

    def finish(self, rid: str) -> None:
        if self.suffix is not None:
            self.suffix.finish_request(rid)
