"""One Graft step around the tree builder: choose retrieval anchors, retrieve, build, commit.

The offline engine and the SGLang worker both drive decoding through ``GraftProposer`` so that
they run the same algorithm; only how draft candidates are produced and how the tree is
verified differ between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from graft_sglang.retrieval.base import Continuations, RetrievalSource
from graft_sglang.retrieval.successor import PAPER_WIDTHS, SuccessorTable
from graft_sglang.tree.builder import GraftConfig, GraftTree, build_graft_tree, prune_mask
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.retrieved import RetrievedCandidates, concat_retrieved, pack_retrieved


@dataclass(frozen=True)
class RetrievalPlan:
    """How much retrieval a step asks for.

    root_nodes:   max trie size retrieved below the root.
    draft_anchors: number of kept draft leaves (best confidence first) that also get a query,
                   with the draft path appended to the request's context.
    anchor_nodes: max trie size below each draft anchor.
    """

    root_nodes: int = 32
    draft_anchors: int = 1
    anchor_nodes: int = 8

    def __post_init__(self) -> None:
        for name in ("root_nodes", "draft_anchors", "anchor_nodes"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetrievalPlan.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def max_slots(self) -> int:
        return self.root_nodes + self.draft_anchors * self.anchor_nodes


def kept_draft_leaves(draft: DraftCandidates, config: GraftConfig, count: int,
                      draft_quotas: torch.Tensor | None = None) -> list[list[int]]:
    """Per request, up to ``count`` leaves of the kept (unpruned) draft tree, best score first."""
    if count == 0 or draft.num_candidates == 0:
        return [[] for _ in range(draft.batch_size)]
    scores = draft.scores.float()
    kept = ~prune_mask(scores, config, draft_quotas)
    # A kept node with a kept child is not a leaf (column m absorbs the non-kept children).
    m = draft.num_candidates
    has_kept_child = torch.zeros(draft.batch_size, m + 1, dtype=torch.bool, device=scores.device)
    kept_child_parent = torch.where(kept & (draft.parents >= 0), draft.parents,
                                    torch.full_like(draft.parents, m))
    has_kept_child.scatter_(1, kept_child_parent, True)
    leaf = kept & ~has_kept_child[:, :m]
    ranked = torch.sort(torch.where(leaf, scores, torch.full_like(scores, -1.0)), dim=1,
                        descending=True, stable=True)
    out = []
    for b in range(draft.batch_size):
        n_leaves = min(count, int(leaf[b].sum()))
        out.append(ranked.indices[b, :n_leaves].tolist())
    return out


def draft_path(draft: DraftCandidates, b: int, node: int) -> list[int]:
    """Tokens from the root's child down to draft candidate ``node`` of request ``b``."""
    parents, tokens = draft.parents[b].tolist(), draft.tokens[b].tolist()
    path = []
    while node >= 0:
        path.append(tokens[node])
        node = parents[node]
    return path[::-1]


class GraftProposer:
    """Builds Graft trees for a batch and keeps the retrieval sources in step with decoding.

    retrieval: the suffix (or any ``RetrievalSource``) retriever, queried below the root and
               the best kept draft leaves (``plan``), or None.
    successor: the paper's successor table, walked from the root token along
               ``successor_widths``; fed with the target's logits at every verified node
               (``observe_verified``). Its slots compete with ``retrieval``'s for the budget.
    """

    def __init__(
        self, config: GraftConfig, retrieval: RetrievalSource | None, plan: RetrievalPlan,
        successor: SuccessorTable | None = None,
        successor_widths: Sequence[int] = PAPER_WIDTHS,
    ) -> None:
        self.config = config
        self.retrieval = retrieval
        self.plan = plan
        self.successor = successor
        self.successor_widths = tuple(successor_widths)

    def retrieve(
        self, rids: Sequence[str], draft: DraftCandidates,
        draft_quotas: torch.Tensor | None = None,
    ) -> list[list[tuple[int, Continuations]]]:
        """Per request: the root trie, then one trie per chosen draft anchor."""
        if self.retrieval is None:
            return [[] for _ in rids]
        anchors = kept_draft_leaves(draft, self.config, self.plan.draft_anchors, draft_quotas)
        out = []
        for b, rid in enumerate(rids):
            tries = [(-1, self.retrieval.propose(rid, (), self.plan.root_nodes))]
            for node in anchors[b]:
                suffix = draft_path(draft, b, node)
                tries.append((node, self.retrieval.propose(rid, suffix, self.plan.anchor_nodes)))
            out.append(tries)
        return out

    def candidates(
        self, rids: Sequence[str], root_tokens: torch.Tensor, draft: DraftCandidates,
        draft_quotas: torch.Tensor | None = None,
    ) -> RetrievedCandidates:
        """Every source's retrieved candidates of the step, side by side (suffix tries packed
        into ``plan.max_slots`` slots, then the successor table's walk)."""
        device = root_tokens.device
        retrieved = pack_retrieved(self.retrieve(rids, draft, draft_quotas),
                                   draft.num_candidates, self.plan.max_slots, device=device)
        if self.successor is not None:
            walk = self.successor.propose(root_tokens, self.successor_widths,
                                          draft.num_candidates, check=self.config.check_inputs)
            retrieved = concat_retrieved(retrieved, walk, draft.num_candidates)
        return retrieved

    def build(
        self, rids: Sequence[str], root_tokens: torch.Tensor, seq_lens: torch.Tensor,
        draft: DraftCandidates, draft_quotas: torch.Tensor | None = None,
    ) -> GraftTree:
        """root_tokens [bs], seq_lens [bs], draft [bs, M] -> trees of ``config.budget`` nodes;
        ``draft_quotas`` [bs]: per-request draft quotas (the stage each request reached)."""
        if len(rids) != root_tokens.shape[0]:
            raise ValueError(f"{len(rids)} request ids for a batch of {root_tokens.shape[0]}")
        retrieved = self.candidates(rids, root_tokens, draft, draft_quotas)
        return build_graft_tree(root_tokens, seq_lens, draft, retrieved, self.config,
                                draft_quotas)

    def observe_verified(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """tokens [n] the verified nodes' tokens, logits [n, V] the target's there: the
        successor table's update (rows of every verified node, accepted or not)."""
        if self.successor is not None:
            self.successor.update_from_logits(tokens, logits, check=self.config.check_inputs)

    def start(self, rid: str, prompt: Sequence[int]) -> None:
        if self.retrieval is not None:
            self.retrieval.start_request(rid, prompt)

    def commit(self, rid: str, accepted: Sequence[int]) -> None:
        """Tokens request ``rid`` committed this step (accepted drafts + bonus)."""
        if self.retrieval is not None:
            self.retrieval.extend_request(rid, accepted)

    def finish(self, rid: str) -> None:
        if self.retrieval is not None:
            self.retrieval.finish_request(rid)
