"""The retrieval interface: a source proposes a small trie of continuations for an anchor."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from graft_sglang.tree.retrieved import RetrievedCandidates


@dataclass
class Continuations:
    """A trie of retrieved continuations hanging below one anchor node (topologically ordered).

    tokens[i]:  token of node i.
    parents[i]: parent node index, ``-1`` = the anchor itself; ``parents[i] < i``.
    probs[i]:   estimated probability of node i given its parent's path, in (0, 1]
                (e.g. the continuation's share of the matched occurrences).
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.parents) == len(self.probs)):
            raise ValueError(
                "Continuations needs tokens, parents and probs of equal length, got "
                f"{len(self.tokens)}, {len(self.parents)}, {len(self.probs)}"
            )
        for i, p in enumerate(self.parents):
            if not -1 <= p < i:
                raise ValueError(f"Continuations.parents[{i}] = {p}; must be in [-1, {i})")

    def __len__(self) -> int:
        return len(self.tokens)

    @staticmethod
    def chain(tokens: Sequence[int], probs: Sequence[float]) -> Continuations:
        """A single path below the anchor."""
        return Continuations(list(tokens), list(range(-1, len(tokens) - 1)), list(probs))


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
