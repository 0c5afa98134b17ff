"""Suffix retrieval for Graft: the request's own text plus its tenant's shared corpus.

``SuffixRetriever`` implements ``RetrievalSource``. Each live request has its own
``SuffixIndex`` (prompt + committed output). A shared ``SuffixIndex`` holds other requests'
finished text and text fed explicitly with ``add_corpus`` (e.g. SGLang's radix cache content),
removable with ``remove_corpus``, each document in its tenant's namespace.

Tenants: a request's tenant is chosen at ``start_request`` (any hashable key, default ``None``;
``tenants`` module), a document's at ``add_corpus``, and a finished request's text joins its own
tenant's corpus (unless ``finished_to_corpus`` is off: set by a feed that adds the same text
itself, e.g. SGLang's radix feed, so that no text is held twice). ``propose`` for a request sees
only its own text and its own tenant's documents: no text of another tenant ever reaches it, so
acceptance cannot leak one tenant's text to another.

Memory: ``request_capacity`` tokens per live request; ``shared_capacity`` tokens for the shared
corpus, all tenants together (one ring buffer: the oldest token is evicted first, whichever
tenant holds it); bookkeeping O(live requests + held documents).

Merging: a proposal matches the context (request text + the query's ``suffix``) against both
indexes and keeps the source(s) with the longest match (a longer match predicts better, whoever
holds it). On a tie, the occurrences of both are merged into one trie, the request's own
weighted ``own_weight`` times higher (a request repeats itself more reliably than other text
does). The trie is built over occurrences grouped by their next token, so a token appears once
among its siblings whichever source proposed it: no duplicate siblings.

Probabilities: a node's conditional probability is its share of its parent's weighted
occurrences (those that stop at the parent count too) times a match confidence
``1 - exp(-L / confidence_scale)``, where ``L`` is the number of context tokens matched on the
path so far (match length plus depth): long matches give near-certain chains, one-token matches
hesitant ones. The trie keeps the ``max_nodes`` nodes of highest path probability (best-first;
ties: the sibling pushed first, siblings in the order their first occurrence is met, the
request's own occurrences newest first, then the shared ones newest first).

Costs: a proposal is O(max_occurrences * max_match) to match plus O(max_nodes *
max_occurrences * log) for the trie; ``retrieve_packed`` answers a whole step (every request's
root and draft-anchor queries) in the packed tensors of ``pack_retrieved``. ``native`` holds a
compiled implementation with the same answers. Why this is the default source (tokens per
step, calibration and timings against the other sources): ``python -m bench.retrieval``,
recorded in bench/results/retrieval.json.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from graft_sglang.retrieval.base import Continuations
from graft_sglang.retrieval.suffix_index import SEPARATOR, SuffixIndex
from graft_sglang.retrieval.tenants import TenantRegistry
from graft_sglang.tree.retrieved import RetrievedCandidates, pack_retrieved


@dataclass(frozen=True)
class SuffixConfig:
    """Settings of ``SuffixRetriever``.

    shared_capacity:  tokens held by the shared corpus, all tenants together (FIFO beyond).
    request_capacity: tokens held per live request (FIFO beyond).
    min_match:        shortest match that yields a proposal.
    max_match:        longest match considered (longer contexts are cut).
    max_depth:        longest continuation followed.
    max_occurrences:  most recent occurrences merged per query.
    own_weight:       weight of the request's own occurrences relative to shared ones.
    confidence_scale: ``L`` at which the match confidence reaches 1 - 1/e, > 0. The default
                      is the scale at which predicted path probabilities followed the observed
                      share of correct nodes on code best in ``bench.retrieval``'s calibration
                      tables (see bench/results/retrieval.json).
    """

    shared_capacity: int = 1 << 20
    request_capacity: int = 1 << 16
    min_match: int = 1
    max_match: int = 16
    max_depth: int = 16
    max_occurrences: int = 16
    own_weight: float = 2.0
    confidence_scale: float = 4.0

    def __post_init__(self) -> None:
        for name in ("shared_capacity", "request_capacity", "min_match", "max_depth",
                     "max_occurrences"):
            if getattr(self, name) < 1:
                raise ValueError(f"SuffixConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_match < max(4, self.min_match):  # 4: the index's longest hash key
            raise ValueError(f"SuffixConfig.max_match must be >= max(4, min_match) = "
                             f"{max(4, self.min_match)}, got {self.max_match}")
        for name in ("own_weight", "confidence_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SuffixConfig.{name} must be > 0, got {getattr(self, name)}")


def _check_tokens(name: str, tokens: Sequence[int]) -> None:
    if len(tokens) and min(tokens) < 0:
        raise ValueError(f"{name} must hold token ids >= 0, got {min(tokens)}")


def draft_path(tokens: Sequence[int], parents: Sequence[int], node: int) -> list[int]:
    """Tokens from the root's child down to draft candidate ``node`` of one request's draft
    tree (``parents[i] < i``, ``-1`` = root). Raises ValueError for an out-of-range node or a
    parent link that does not point to an earlier candidate."""
    if not 0 <= node < len(tokens):
        raise ValueError(f"anchor {node} out of range [-1, {len(tokens)})")
    path = []
    while node >= 0:
        path.append(tokens[node])
        parent = parents[node]
        if parent >= node:
            raise ValueError(f"draft parents[{node}] = {parent}; must be < {node}")
        node = parent
    return path[::-1]


_Occurrence = tuple[SuffixIndex, int, float]
"""(index, log position of the last token on the path so far, weight)."""


class SuffixRetriever:
    """Per-request and per-tenant shared suffix retrieval (see module docstring)."""

    def __init__(self, config: SuffixConfig | None = None) -> None:
        self.config = config or SuffixConfig()
        self.shared = self._new_index(self.config.shared_capacity)
        self.tenants = TenantRegistry()
        self._requests: dict[str, tuple[SuffixIndex, int]] = {}  # rid -> (index, namespace)
        # Every document of the shared index, oldest first: (log position of its closing
        # SEPARATOR, namespace, add_corpus handle or -1 for a finished request's text).
        self._documents: deque[tuple[int, int, int]] = deque()
        self._corpora: dict[int, tuple[int, int, int]] = {}  # handle -> (first, last, namespace)
        self._next_handle = 0
        self.finished_to_corpus = True  # whether finish_request adds the request's text

    def _new_index(self, capacity: int) -> SuffixIndex:
        return SuffixIndex(capacity=capacity, max_match=self.config.max_match,
                           max_candidates=self.config.max_occurrences)

    # -- RetrievalSource ----------------------------------------------------------------------
    def start_request(self, rid: str, prompt: Sequence[int], tenant: Hashable = None) -> None:
        """Track request ``rid`` of ``tenant`` from its prompt on."""
        if rid in self._requests:
            raise ValueError(f"request {rid!r} already started")
        _check_tokens("prompt", prompt)
        index = self._new_index(self.config.request_capacity)
        index.append(prompt)
        self._requests[rid] = (index, self.tenants.acquire(tenant))

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        _check_tokens("tokens", tokens)
        self._request(rid)[0].append(tokens)

    def finish_request(self, rid: str) -> None:
        """Drop the request's state (a no-op for an unknown one); with ``finished_to_corpus``
        its text joins its tenant's shared corpus."""
        entry = self._requests.pop(rid, None)
        if entry is None:
            return
        index, namespace = entry
        if self.finished_to_corpus and len(index):  # the reference passes to the document
            self._append_document(index.tokens(index.start, index.end), namespace, -1)
        else:
            self.tenants.release(namespace)

    def propose(self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16) -> Continuations:
        if max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
        _check_tokens("suffix", suffix)
        own, namespace = self._request(rid)
        cfg = self.config
        tail_len = max(0, cfg.max_match - len(suffix))
        context = own.tokens(own.end - tail_len, own.end)
        context.extend(suffix)
        context = context[-cfg.max_match :]
        if max_nodes == 0 or not context:
            return Continuations()
        sources = [(own, own.match(context), cfg.own_weight),
                   (self.shared, self.shared.match(context, namespace), 1.0)]
        best = max(m.length for _, m, _ in sources)
        if best < cfg.min_match:
            return Continuations()
        occurrences = [(index, pos, weight) for index, match, weight in sources
                       if match.length == best for pos in match.positions]
        return self._best_first(occurrences, best, max_nodes)

    def retrieve_packed(
        self, rids: Sequence[str], anchors: torch.Tensor, draft_tokens: torch.Tensor,
        draft_parents: torch.Tensor, root_nodes: int, anchor_nodes: int, max_slots: int,
        device: torch.device | str = "cpu",
    ) -> RetrievedCandidates:
        """``PackedRetrievalSource.retrieve_packed`` (``base``): ``propose`` for the root and
        each anchor ``anchors[b, j] >= 0`` (draft path appended), then ``pack_retrieved``.
        Host tensors (others are copied). Raises ValueError for an unknown request, an anchor
        >= M or a draft parent link that does not point to an earlier candidate."""
        anchor_rows = anchors.tolist()
        token_rows, parent_rows = draft_tokens.tolist(), draft_parents.tolist()
        if not len(rids) == len(anchor_rows) == len(token_rows) == len(parent_rows):
            raise ValueError(f"retrieve_packed needs one row per request: {len(rids)} rids, "
                             f"anchors {tuple(anchors.shape)}, draft_tokens "
                             f"{tuple(draft_tokens.shape)}, draft_parents "
                             f"{tuple(draft_parents.shape)}")
        per_request = []
        for rid, row, tokens, parents in zip(rids, anchor_rows, token_rows, parent_rows,
                                             strict=True):
            tries = [(-1, self.propose(rid, (), root_nodes))]
            for node in row:
                if node >= 0:
                    path = draft_path(tokens, parents, node)
                    tries.append((node, self.propose(rid, path, anchor_nodes)))
            per_request.append(tries)
        return pack_retrieved(per_request, draft_tokens.shape[1], max_slots, device)

    # -- shared corpus --------------------------------------------------------------------------
    def add_corpus(self, tokens: Sequence[int], tenant: Hashable = None) -> int:
        """Add text to ``tenant``'s shared corpus; returns a handle for ``remove_corpus``."""
        _check_tokens("tokens", tokens)
        handle = self._next_handle
        self._next_handle += 1
        self._append_document(tokens, self.tenants.acquire(tenant), handle)
        return handle

    def remove_corpus(self, handle: int) -> None:
        """Forget text added by ``add_corpus``; a no-op if it was already evicted or removed."""
        if not 0 <= handle < self._next_handle:
            raise ValueError(f"handle must be one returned by add_corpus, in [0, "
                             f"{self._next_handle}), got {handle}")
        span = self._corpora.pop(handle, None)
        if span is not None:
            first, last, namespace = span
            self.shared.blank(first, last)
            self.tenants.release(namespace)

    def _append_document(self, tokens: Sequence[int], namespace: int, handle: int) -> None:
        """Append a document holding one reference to ``namespace``, then forget the
        documents fully evicted, oldest first (keeps the bookkeeping bounded)."""
        first = self.shared.end
        self.shared.append([*tokens, SEPARATOR], namespace)
        last = self.shared.end - 1
        self._documents.append((last, namespace, handle))
        if handle >= 0:
            self._corpora[handle] = (first, last, namespace)
        while self._documents and self._documents[0][0] <= self.shared.start:
            _, namespace, handle = self._documents.popleft()
            if handle < 0 or self._corpora.pop(handle, None) is not None:  # not removed
                self.tenants.release(namespace)

    @property
    def live_requests(self) -> list[str]:
        return list(self._requests)

    def _request(self, rid: str) -> tuple[SuffixIndex, int]:
        entry = self._requests.get(rid)
        if entry is None:
            raise ValueError(f"unknown request {rid!r} (start_request was not called)")
        return entry

    def _best_first(self, occurrences: list[_Occurrence], match_len: int,
                    max_nodes: int) -> Continuations:
        """The ``max_nodes`` trie nodes of highest path probability, parents before children.

        A trie node is the group of occurrences whose continuations share its path; a node's
        children are found only when it is taken, so the cost follows ``max_nodes``, not the
        full trie of ``max_occurrences * max_depth`` tokens.
        """
        scale, max_depth = self.config.confidence_scale, self.config.max_depth
        out = Continuations()
        # Heap of (-path_prob, order, parent_index, token, cond_prob, depth, occurrences).
        heap: list = []
        order = 0

        def expand(group: list[_Occurrence], parent_index: int, parent_prob: float,
                   depth: int) -> None:
            nonlocal order
            if depth == max_depth:
                return
            confidence = 1.0 - math.exp(-(match_len + depth) / scale)
            total = 0.0
            children: dict[int, list] = {}  # token -> [weight, occurrences]
            for index, pos, weight in group:
                total += weight  # occurrences whose text ends here still count: they stop
                token = index.next_token(pos)
                if token != SEPARATOR:
                    child = children.get(token)
                    if child is None:
                        children[token] = [weight, [(index, pos + 1, weight)]]
                    else:
                        child[0] += weight
                        child[1].append((index, pos + 1, weight))
            for token, (weight, child_group) in children.items():
                cond = weight / total * confidence
                heapq.heappush(heap, (-parent_prob * cond, order, parent_index, token, cond,
                                      depth + 1, child_group))
                order += 1

        expand(occurrences, -1, 1.0, 0)
        for node in range(max_nodes):
            if not heap:
                break
            neg_prob, _, parent_index, token, cond, depth, group = heapq.heappop(heap)
            out.tokens.append(token)
            out.parents.append(parent_index)
            out.probs.append(cond)
            expand(group, node, -neg_prob, depth)
        return out
