"""The retrieval interfaces: per-request sources, and the one batched call a step makes.

A per-request source (``RetrievalSource``) proposes a small trie of continuations for one
anchor. A step asks every source once for the whole batch (``StepRetrieval.retrieve_step``
with one ``StepQuery``) and gets packed tensors back (``RetrievedCandidates``, the tree layer's
input): the suffix retriever through ``SuffixQueries`` (its ``retrieve_packed`` with the step's
``RetrievalPlan``), the successor table (``successor.SuccessorTable``) directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from graft_sglang.tree.retrieved import Continuations, RetrievedCandidates

__all__ = ["Continuations", "PackedRetrievalSource", "RetrievalPlan", "RetrievalSource",
           "StepQuery", "StepRetrieval", "SuffixQueries"]


class RetrievalSource(Protocol):
    """A per-request retrieval source (suffix matching over text already seen).

    The source tracks each live request's tokens (prompt + accepted output). ``propose`` anchors
    at the request's current end extended by ``suffix`` (e.g. the tokens of a kept draft path
    below the root) and returns a trie of likely continuations of at most ``max_nodes`` nodes.
    ``tenant`` (any hashable, default ``None``) scopes what other text the request may see.
    """

    def start_request(self, rid: str, prompt: Sequence[int], tenant: Hashable = None) -> None: ...

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None: ...

    def finish_request(self, rid: str) -> None: ...

    def propose(
        self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16
    ) -> Continuations: ...


class PackedRetrievalSource(RetrievalSource, Protocol):
    """A source that answers every query of a step in one call (``SuffixRetriever`` and its
    native twin): per request ``b``, the root query (``root_nodes`` nodes) and one query below
    each draft candidate ``anchors[b, j] >= 0`` (``anchor_nodes`` nodes, the draft path down to
    it appended to the context), packed as ``pack_retrieved`` packs them.

    anchors [bs, A] int64 (negative = padding); draft_tokens / draft_parents [bs, M] int64,
    host tensors. Returns RetrievedCandidates [bs, max_slots] on ``device``.
    """

    def retrieve_packed(
        self, rids: Sequence[str], anchors: torch.Tensor, draft_tokens: torch.Tensor,
        draft_parents: torch.Tensor, root_nodes: int, anchor_nodes: int, max_slots: int,
        device: torch.device | str = "cpu",
    ) -> RetrievedCandidates: ...


@dataclass(frozen=True)
class RetrievalPlan:
    """How much suffix retrieval a step asks for.

    root_nodes:    max trie size retrieved below the root.
    draft_anchors: number of kept draft leaves (best confidence first) that also get a query,
                   with the draft path appended to the request's context.
    anchor_nodes:  max trie size below each draft anchor.
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


@dataclass(frozen=True)
class StepQuery:
    """What one step asks its sources, every request at once.

    rids:          the batch's request ids, one per row.
    roots:         [bs] int64 root tokens, on the step's device (where answers go).
    num_draft:     M, the step's draft candidates (retrieved slots' own links start there).
    anchors:       [bs, A] int64 host tensor: draft candidates to query below (-1: padding).
    draft_tokens:  [bs, M] int64 host tensor, the draft's tokens (what the anchors' paths read;
                   zeros when A = 0).
    draft_parents: [bs, M] int64 host tensor, the draft's parent links (likewise).
    check:         whether a source checks input values (each check is a host read).
    """

    rids: Sequence[str]
    roots: torch.Tensor
    num_draft: int
    anchors: torch.Tensor
    draft_tokens: torch.Tensor
    draft_parents: torch.Tensor
    check: bool = True

    @property
    def device(self) -> torch.device:
        return self.roots.device


class StepRetrieval(Protocol):
    """A source asked once per step for the whole batch.

    ``num_slots``: the slots every answer has per request. ``retrieve_step`` returns
    RetrievedCandidates [bs, num_slots] on ``query.device``, in the combined index space
    (parents ``>= query.num_draft`` are its own slots).
    """

    @property
    def num_slots(self) -> int: ...

    def retrieve_step(self, query: StepQuery) -> RetrievedCandidates: ...


class SuffixQueries:
    """A ``PackedRetrievalSource`` asked as a step asks: the root query and the anchored ones
    of ``plan``, in one ``retrieve_packed`` call. ``source`` keeps its own request bookkeeping
    (``start_request`` ... ``finish_request``)."""

    def __init__(self, source: PackedRetrievalSource, plan: RetrievalPlan) -> None:
        self.source = source
        self.plan = plan

    @property
    def num_slots(self) -> int:
        return self.plan.max_slots

    def retrieve_step(self, query: StepQuery) -> RetrievedCandidates:
        plan = self.plan
        return self.source.retrieve_packed(
            query.rids, query.anchors, query.draft_tokens, query.draft_parents,
            plan.root_nodes, plan.anchor_nodes, plan.max_slots, query.device)
