"""Suffix retrieval for Graft: the request's own text plus a shared corpus of other text.

``SuffixRetriever`` implements ``RetrievalSource``. Each live request has its own
``SuffixIndex`` (prompt + committed output); a shared ``SuffixIndex`` holds other requests'
finished text and text fed explicitly with ``add_corpus`` (e.g. SGLang's radix cache content),
removable with ``remove_corpus``.

A proposal matches the context (request text + the query's ``suffix``) against both indexes,
keeps the source(s) with the longest match, and merges their continuations into one trie
(siblings unique by construction). Counts of the request's own occurrences are weighted
``own_weight`` times higher: a request repeats itself more reliably than other text does.
Probabilities: a node's conditional probability is its share of its parent's weighted count
times a match confidence ``1 - exp(-L / confidence_scale)``, where ``L`` is the number of
context tokens matched on the path so far (the match length plus the depth), so long matches
give near-certain chains and one-token matches give hesitant ones. The trie keeps the
``max_nodes`` nodes of highest path probability (best-first).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

from graft_sglang.retrieval.base import Continuations
from graft_sglang.retrieval.suffix_index import SEPARATOR, SuffixIndex


@dataclass(frozen=True)
class SuffixConfig:
    """Settings of ``SuffixRetriever``.

    shared_capacity / request_capacity: tokens held (FIFO eviction beyond).
    min_match:        shortest match that yields a proposal.
    max_match:        longest match considered (longer contexts are cut).
    max_depth:        longest continuation followed.
    max_occurrences:  most recent occurrences merged per query.
    own_weight:       weight of the request's own occurrences relative to shared ones.
    confidence_scale: ``L`` at which the match confidence reaches 1 - 1/e.
    """

    shared_capacity: int = 1 << 20
    request_capacity: int = 1 << 16
    min_match: int = 1
    max_match: int = 16
    max_depth: int = 16
    max_occurrences: int = 16
    own_weight: float = 2.0
    confidence_scale: float = 2.0

    def __post_init__(self) -> None:
        for name in ("shared_capacity", "request_capacity", "min_match", "max_depth",
                     "max_occurrences"):
            if getattr(self, name) < 1:
                raise ValueError(f"SuffixConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_match < max(4, self.min_match):
            raise ValueError(f"SuffixConfig.max_match must be >= max(4, min_match), "
                             f"got {self.max_match}")
        if self.own_weight <= 0 or self.confidence_scale <= 0:
            raise ValueError("SuffixConfig.own_weight and confidence_scale must be > 0")


class _TrieNode:
    __slots__ = ("children", "weight")

    def __init__(self) -> None:
        self.weight = 0.0
        self.children: dict[int, _TrieNode] = {}


class SuffixRetriever:
    """Per-request and shared suffix retrieval (see module docstring)."""

    def __init__(self, config: SuffixConfig | None = None) -> None:
        self.config = config or SuffixConfig()
        self.shared = self._new_index(self.config.shared_capacity)
        self._requests: dict[str, SuffixIndex] = {}
        self._corpora: dict[int, tuple[int, int]] = {}
        self._next_handle = 0

    def _new_index(self, capacity: int) -> SuffixIndex:
        return SuffixIndex(capacity=capacity, max_match=self.config.max_match,
                           max_candidates=self.config.max_occurrences)

    # -- RetrievalSource ----------------------------------------------------------------------
    def start_request(self, rid: str, prompt: Sequence[int]) -> None:
        if rid in self._requests:
            raise ValueError(f"request {rid!r} already started")
        index = self._new_index(self.config.request_capacity)
        index.append(prompt)
        self._requests[rid] = index

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        self._request(rid).append(tokens)

    def finish_request(self, rid: str) -> None:
        """Drop the request's state; its text joins the shared corpus."""
        index = self._requests.pop(rid, None)
        if index is not None and len(index):
            self.shared.append([index.token(p) for p in range(index.start, index.end)])
            self.shared.append([SEPARATOR])

    def propose(self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16) -> Continuations:
        if max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
        own = self._request(rid)
        cfg = self.config
        tail_len = max(0, cfg.max_match - len(suffix))
        context = [own.token(p) for p in range(max(own.start, own.end - tail_len), own.end)]
        context.extend(suffix)
        context = context[-cfg.max_match :]
        if max_nodes == 0 or not context:
            return Continuations()
        sources = [(own, own.match(context), cfg.own_weight),
                   (self.shared, self.shared.match(context), 1.0)]
        best = max(m.length for _, m, _ in sources)
        if best < cfg.min_match:
            return Continuations()
        root = _TrieNode()
        for index, match, weight in sources:
            if match.length != best:
                continue
            for pos in match.positions:
                follow = index.continuation(pos, cfg.max_depth)
                if not follow:
                    continue  # the context itself, at the end of the request's text
                root.weight += weight
                node = root
                for t in follow:
                    node = node.children.setdefault(t, _TrieNode())
                    node.weight += weight
        return self._best_first(root, best, max_nodes)

    # -- shared corpus --------------------------------------------------------------------------
    def add_corpus(self, tokens: Sequence[int]) -> int:
        """Add text to the shared corpus; returns a handle for ``remove_corpus``."""
        first = self.shared.end
        self.shared.append(tokens)
        self.shared.append([SEPARATOR])
        handle = self._next_handle
        self._next_handle += 1
        self._corpora[handle] = (first, self.shared.end - 1)
        return handle

    def remove_corpus(self, handle: int) -> None:
        """Forget text added by ``add_corpus`` (a no-op if it was already evicted)."""
        if handle not in self._corpora:
            raise ValueError(f"unknown corpus handle {handle}")
        first, last = self._corpora.pop(handle)
        self.shared.blank(first, last)

    @property
    def live_requests(self) -> list[str]:
        return list(self._requests)

    def _request(self, rid: str) -> SuffixIndex:
        index = self._requests.get(rid)
        if index is None:
            raise ValueError(f"unknown request {rid!r} (start_request was not called)")
        return index

    def _best_first(self, root: _TrieNode, match_len: int, max_nodes: int) -> Continuations:
        """The ``max_nodes`` trie nodes of highest path probability, parents before children."""
        scale = self.config.confidence_scale
        out = Continuations()
        # Heap of (-path_prob, order, node, parent_index, token, cond_prob, depth).
        heap: list = []
        order = 0

        def push(parent: _TrieNode, parent_index: int, parent_prob: float, depth: int) -> None:
            nonlocal order
            confidence = 1.0 - math.exp(-(match_len + depth) / scale)
            for token, child in parent.children.items():
                cond = child.weight / parent.weight * confidence
                heapq.heappush(heap, (-parent_prob * cond, order, child, parent_index, token,
                                      cond, depth))
                order += 1

        push(root, -1, 1.0, 0)
        while heap and len(out) < max_nodes:
            neg_prob, _, node, parent_index, token, cond, depth = heapq.heappop(heap)
            out.tokens.append(token)
            out.parents.append(parent_index)
            out.probs.append(cond)
            push(node, len(out) - 1, -neg_prob, depth + 1)
        return out
