"""Suffix retrieval for Graft: the request's own text plus a shared corpus of other text.

``SuffixRetriever`` implements ``RetrievalSource``. Each live request has its own
``SuffixIndex`` (prompt + committed output); a shared ``SuffixIndex`` holds other requests'
finished text and text fed explicitly with ``add_corpus`` (e.g. SGLang's radix cache content),
removable with ``remove_corpus``. Both are capped (``request_capacity``, ``shared_capacity``
tokens, oldest evicted first).

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
hesitant ones. The trie keeps the ``max_nodes`` nodes of highest path probability (best-first).

Why this is the default source (``python -m bench.retrieval --target-logits``, results in
bench/results/retrieval.json; one CPU thread, budget 16, retrieval-only decoding of 6000-token
streams, prompt = first third, median times per step): it gives the most tokens per step on
code (tau 1.92; SGLang's NgramCorpus fed the prompt 1.90, Arctic's suffix tree 1.59 with vLLM's
limits and 1.82 without, hash n-gram 1.75, successor table 1.47-1.51) and on prose (1.38;
NgramCorpus 1.37, Arctic 1.21-1.32, successor table 1.29-1.31, hash n-gram 1.21), at about
31-36 us lookup + 5 us update: less than NgramCorpus (30-40 + 35-50 us) and the successor
table (208-228 + 109-118 us of small torch ops), more than Arctic's C++ (6-9 + 2 us), which
proposes worse trees. It needs no compiler at run time, and its probabilities are calibrated (see
``SuffixConfig.confidence_scale``; the successor table's are not: nodes it rates 0.9-1.0 were
right 26-58% of the time). The successor table keeps one advantage: one batched walk serves a
whole batch, and it runs on the device (see the batched table of the benchmark).
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
    confidence_scale: ``L`` at which the match confidence reaches 1 - 1/e. 4 by measurement
                      (bench.retrieval's calibration): on code, predicted path probabilities
                      then match the observed share of correct nodes within about 0.1 per
                      decile (scale 2 claimed 0.6-0.9 for nodes right 2-25% of the time; 6-8
                      turn under-confident); on prose the top decile stays over-confident.
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


_Occurrence = tuple[SuffixIndex, int, float]
"""(index, log position of the last token on the path so far, weight)."""


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
        _check_tokens("prompt", prompt)
        index = self._new_index(self.config.request_capacity)
        index.append(prompt)
        self._requests[rid] = index

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        _check_tokens("tokens", tokens)
        self._request(rid).append(tokens)

    def finish_request(self, rid: str) -> None:
        """Drop the request's state (a no-op for an unknown one); its text joins the shared
        corpus."""
        index = self._requests.pop(rid, None)
        if index is not None and len(index):
            self.shared.append([*index.tokens(index.start, index.end), SEPARATOR])
            self._forget_evicted_corpora()

    def propose(self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16) -> Continuations:
        if max_nodes < 0:
            raise ValueError(f"max_nodes must be >= 0, got {max_nodes}")
        _check_tokens("suffix", suffix)
        own = self._request(rid)
        cfg = self.config
        tail_len = max(0, cfg.max_match - len(suffix))
        context = own.tokens(own.end - tail_len, own.end)
        context.extend(suffix)
        context = context[-cfg.max_match :]
        if max_nodes == 0 or not context:
            return Continuations()
        sources = [(own, own.match(context), cfg.own_weight),
                   (self.shared, self.shared.match(context), 1.0)]
        best = max(m.length for _, m, _ in sources)
        if best < cfg.min_match:
            return Continuations()
        occurrences = [(index, pos, weight) for index, match, weight in sources
                       if match.length == best for pos in match.positions]
        return self._best_first(occurrences, best, max_nodes)

    # -- shared corpus --------------------------------------------------------------------------
    def add_corpus(self, tokens: Sequence[int]) -> int:
        """Add text to the shared corpus; returns a handle for ``remove_corpus``."""
        _check_tokens("tokens", tokens)
        first = self.shared.end
        self.shared.append([*tokens, SEPARATOR])
        handle = self._next_handle
        self._next_handle += 1
        self._corpora[handle] = (first, self.shared.end - 1)
        self._forget_evicted_corpora()
        return handle

    def remove_corpus(self, handle: int) -> None:
        """Forget text added by ``add_corpus``; a no-op if it was already evicted or removed."""
        if not 0 <= handle < self._next_handle:
            raise ValueError(f"handle must be one returned by add_corpus, in [0, "
                             f"{self._next_handle}), got {handle}")
        span = self._corpora.pop(handle, None)
        if span is not None:
            self.shared.blank(*span)

    def _forget_evicted_corpora(self) -> None:
        """Drop the handles of fully evicted text, oldest first (keeps ``_corpora`` bounded)."""
        while self._corpora:
            handle, (_, last) = next(iter(self._corpora.items()))
            if last > self.shared.start:
                break
            del self._corpora[handle]

    @property
    def live_requests(self) -> list[str]:
        return list(self._requests)

    def _request(self, rid: str) -> SuffixIndex:
        index = self._requests.get(rid)
        if index is None:
            raise ValueError(f"unknown request {rid!r} (start_request was not called)")
        return index

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
