"""Retrieved candidates: the tries retrieval sources propose, packed into padded tensors.

Index space shared with the draft: a step has ``M`` draft candidates (indices ``0..M-1``) followed
by ``R`` retrieved slots (indices ``M..M+R-1``). A retrieved node hangs below the root (``-1``), a
draft candidate, or an earlier retrieved node.

The tree layer defines what it consumes (``Continuations``, ``RetrievedCandidates``); the
retrieval layer (``graft_sglang.retrieval``) produces them and imports them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


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


@dataclass(frozen=True)
class RetrievedCandidates:
    """Retrieved nodes of one decoding step, padded to ``R`` per request.

    tokens:     [bs, R] int64 (padding: 0).
    parents:    [bs, R] int64 in the combined index space: ``-1`` root, ``0..M-1`` a draft
                candidate, ``M + j`` retrieved slot ``j`` (``j`` < own slot).
    anchors:    [bs, R] int64, the draft candidate (or ``-1`` = root) the node's trie hangs below.
    path_probs: [bs, R] float32, product of the trie's edge probabilities from the anchor down to
                the node (inclusive), in (0, 1] for valid slots (checked by the builder); the
                anchor's own draft confidence is multiplied in later.
    valid:      [bs, R] bool, False for padding.
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    anchors: torch.Tensor
    path_probs: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self) -> None:
        shape = tuple(self.tokens.shape)
        if self.tokens.dim() != 2:
            raise ValueError(f"RetrievedCandidates.tokens must be [bs, R], got shape {shape}")
        for name in ("parents", "anchors", "path_probs", "valid"):
            other = tuple(getattr(self, name).shape)
            if other != shape:
                raise ValueError(f"RetrievedCandidates.{name} has shape {other}, tokens {shape}")

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_slots(self) -> int:
        return self.tokens.shape[1]

    @staticmethod
    def empty(batch_size: int, device: torch.device | str = "cpu") -> RetrievedCandidates:
        z = torch.zeros(batch_size, 0, dtype=torch.int64, device=device)
        return RetrievedCandidates(
            z, z.clone(), z.clone(), torch.zeros(batch_size, 0, device=device),
            torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
        )


AnchoredTries = Sequence[tuple[int, Continuations]]
"""Per request: (anchor, trie) pairs, anchor = draft candidate index or -1 for the root."""


def pack_retrieved(
    per_request: Sequence[AnchoredTries],
    num_draft: int,
    max_slots: int,
    device: torch.device | str = "cpu",
) -> RetrievedCandidates:
    """Pack each request's anchored tries into ``max_slots`` padded slots.

    Tries are taken in the given order and cut at ``max_slots`` nodes per request; a node whose
    parent was cut is dropped too, so every kept node's parent is kept.
    """
    if max_slots < 0:
        raise ValueError(f"max_slots must be >= 0, got {max_slots}")
    bs = len(per_request)
    # Python lists first, one tensor per field at the end: element-wise tensor writes are slow.
    tokens = [[0] * max_slots for _ in range(bs)]
    parents = [[-1] * max_slots for _ in range(bs)]
    anchors = [[-1] * max_slots for _ in range(bs)]
    probs = [[0.0] * max_slots for _ in range(bs)]
    valid = [[False] * max_slots for _ in range(bs)]
    for b, tries in enumerate(per_request):
        n = 0
        for anchor, trie in tries:
            if not -1 <= anchor < num_draft:
                raise ValueError(f"anchor {anchor} out of range [-1, {num_draft})")
            slot_of: list[int] = []
            path: list[float] = []
            for tok, par, p in zip(trie.tokens, trie.parents, trie.probs, strict=True):
                if not 0.0 < p <= 1.0:
                    raise ValueError(f"retrieved probability {p} outside (0, 1]")
                parent_slot = -2 if par < 0 else slot_of[par]
                if n >= max_slots or parent_slot == -1:  # no room, or parent was dropped
                    slot_of.append(-1)
                    path.append(0.0)
                    continue
                prob = p * (1.0 if par < 0 else path[par])
                tokens[b][n] = tok
                parents[b][n] = anchor if par < 0 else num_draft + parent_slot
                anchors[b][n] = anchor
                probs[b][n] = prob
                valid[b][n] = True
                slot_of.append(n)
                path.append(prob)
                n += 1
    shape = (bs, max_slots)

    def tensor(rows: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(rows, dtype=dtype, device=device).reshape(shape)

    return RetrievedCandidates(
        tensor(tokens, torch.int64), tensor(parents, torch.int64), tensor(anchors, torch.int64),
        tensor(probs, torch.float32), tensor(valid, torch.bool),
    )


def concat_retrieved(
    first: RetrievedCandidates, second: RetrievedCandidates, num_draft: int
) -> RetrievedCandidates:
    """Two sources' slots side by side (``first``'s, then ``second``'s), competing for the same
    budget in the builder, which merges their duplicate siblings. ``second``'s links to its own
    slots are shifted past ``first``'s slots."""
    if first.batch_size != second.batch_size:
        raise ValueError(f"batch sizes differ: {first.batch_size} and {second.batch_size}")
    parents = torch.where(second.parents >= num_draft, second.parents + first.num_slots,
                          second.parents)
    return RetrievedCandidates(
        torch.cat([first.tokens, second.tokens], dim=1),
        torch.cat([first.parents, parents], dim=1),
        torch.cat([first.anchors, second.anchors], dim=1),
        torch.cat([first.path_probs, second.path_probs], dim=1),
        torch.cat([first.valid, second.valid], dim=1),
    )
