"""One Graft step for a batch: anchors, one batched retrieval call per source, the tree build.

The offline engine and the SGLang worker both build their trees with ``GraftStep`` (from the
same ``recipe.Recipe``): (roots, seq_lens, draft, per-request quotas) -> tree. Only how draft
candidates are produced and how the tree is verified differ between them.

Host traffic per step, with value checks off (``check_inputs=False``, a server's setting):
no scalar read; at most one device-to-host copy, what the suffix source needs to see (the
anchors and the draft's tokens and parents, stacked, only when the plan has draft anchors);
the successor walk and the compiled tree build (``tree.kernel.build_graft_tree_fast``, which
may also write the verify mask into a caller's buffer) stay on the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

import torch

from graft_sglang.recipe import Recipe
from graft_sglang.retrieval.base import (
    PackedRetrievalSource,
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
    Sources answer in the recipe's order (suffix slots, then successor slots) and compete for
    the budget in the builder. Raises ValueError for a source the recipe needs and lacks, or
    one it does not use.
    """

    def __init__(self, recipe: Recipe, suffix: PackedRetrievalSource | None = None,
                 successor: SuccessorTable | None = None, *, check_inputs: bool = True) -> None:
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

    @classmethod
    def for_recipe(cls, recipe: Recipe, suffix: PackedRetrievalSource | None = None, *,
                   vocab_size: int | None = None, device: torch.device | str = "cpu",
                   check_inputs: bool = True) -> GraftStep:
        """The step of ``recipe``: ``suffix`` used where the recipe retrieves from it (ignored
        otherwise), a fresh successor table of ``vocab_size`` on ``device`` where it uses one
        (ValueError without ``vocab_size``)."""
        successor = None
        if recipe.uses_successor:
            if vocab_size is None:
                raise ValueError("the successor table needs the target's vocabulary size")
            successor = SuccessorTable(vocab_size, recipe.successor_k, device=device,
                                       widths=recipe.successor_widths)
        return cls(recipe, suffix if recipe.uses_suffix else None, successor,
                   check_inputs=check_inputs)

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
                 draft_quotas: torch.Tensor | None = None) -> RetrievedCandidates:
        """Every source's candidates of the step, side by side, on ``roots.device``."""
        if len(rids) != roots.shape[0]:
            raise ValueError(f"{len(rids)} request ids for a batch of {roots.shape[0]}")
        if not self.sources:
            return RetrievedCandidates.empty(roots.shape[0], roots.device)
        query = self.query(rids, roots, draft, draft_quotas)
        out = None
        for source in self.sources:
            part = source.retrieve_step(query)
            out = part if out is None else concat_retrieved(out, part, draft.num_candidates)
        return out

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
        seq_lens_sum: int | None = None,
    ) -> tuple[GraftTree, torch.Tensor | None]:
        """roots [bs], seq_lens [bs], draft [bs, M], draft_quotas [bs] (or None) -> trees of
        ``budget`` nodes and their mask (see ``tree``): ``retrieve``, then ``tree``."""
        retrieved = self.retrieve(rids, roots, draft, draft_quotas)
        return self.tree(roots, seq_lens, draft, retrieved, draft_quotas, mask_mode=mask_mode,
                         mask_out=mask_out, seq_lens_sum=seq_lens_sum)

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
