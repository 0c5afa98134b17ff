"""The retrieval interface: a source proposes a small trie of continuations for an anchor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


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
    """

    def start_request(self, rid: str, prompt: Sequence[int]) -> None: ...

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None: ...

    def finish_request(self, rid: str) -> None: ...

    def propose(
        self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16
    ) -> Continuations: ...
