"""The paper's retrieval source: a device-resident successor table fed by the target's logits.

``table[v]`` holds the ``k`` most likely next tokens after token ``v`` (and their probabilities)
as last seen in the target's verification logits: every verified tree node, accepted or not,
rewrites the row of its own token (Token Recycling's mechanism). Rows never written propose
nothing. A proposal walks a fixed, lopsided rank template from the root token (one batched
gather per level, no host round trip): level ``d`` has ``widths[d]`` nodes, node ``(parent,
rank)`` gets token ``table[token(parent), rank]``, and the template prefers low rank sums, so
the rank-0 chain runs deepest. A node's path probability is the product of the stored
probabilities on its path.

Duplicate siblings: siblings come from one row, and a row never repeats a token (``top-k``
cannot; ``update`` drops a repeated id within a row, keeping its first, higher-ranked entry).
The template does not skip to the next rank: a dropped or empty entry leaves its slot, and its
whole subtree, empty (invalid). Identical updates give identical tables on every
tensor-parallel rank.

Its path probabilities describe the row's last context, not the current one, and run
over-confident (calibration and timings: ``python -m bench.retrieval --target-logits``, recorded
in bench/results/retrieval.json): give its slots a ``GraftConfig.retrieval_weight`` below 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

from graft_sglang.retrieval.base import StepQuery
from graft_sglang.tree.retrieved import RetrievedCandidates

PAPER_WIDTHS = (8, 10, 8, 6, 5, 4, 4, 4, 3)


@lru_cache(maxsize=64)
def rank_template(widths: tuple[int, ...], k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Parents (template index, -1 = root) and ranks of a lopsided template, level by level.

    Candidate (parent j, rank r) costs ``cost(j) + r``; each level keeps its ``widths[d]``
    cheapest candidates (ties: earlier parent, then lower rank), so the rank-0 chain (cost 0)
    reaches every level.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be a non-empty sequence of integers >= 1, got {widths}")
    parents: list[int] = []
    ranks: list[int] = []
    level = [(-1, 0)]  # (template index, cost) of the previous level
    for d, width in enumerate(widths):
        if width > len(level) * k:
            raise ValueError(f"widths[{d}] = {width} exceeds the {len(level) * k} candidates "
                             f"of the level above (its width times the table width k = {k})")
        cands = sorted(
            (cost + r, order, idx, r) for order, (idx, cost) in enumerate(level)
            for r in range(k)
        )[:width]
        nxt = []
        for cost, _, parent, r in sorted(cands, key=lambda c: (c[1], c[3])):
            parents.append(parent)
            ranks.append(r)
            nxt.append((len(parents) - 1, cost))
        level = nxt
    return tuple(parents), tuple(ranks)


class SuccessorTable:
    """``[vocab, k]`` next-token table (see module docstring); a ``StepRetrieval`` source
    (``retrieve_step``: the walk of ``widths`` from every root).

    Stored with one extra sentinel row ``vocab_size`` of empty entries (id ``vocab_size``,
    probability 0): an empty entry points there, so a walk through it stays empty without any
    masking.
    """

    def __init__(self, vocab_size: int, k: int = 10, device: torch.device | str = "cpu",
                 widths: Sequence[int] = PAPER_WIDTHS) -> None:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.vocab_size, self.k = vocab_size, k
        self.widths = tuple(widths)  # the walk of ``retrieve_step``
        self._next = torch.full((vocab_size + 1, k), vocab_size, dtype=torch.int64,
                                device=device)
        self._probs = torch.zeros(vocab_size + 1, k, dtype=torch.float32, device=device)
        # [k, k]: entry j comes before entry r in a row (j < r).
        self._earlier = torch.ones(k, k, dtype=torch.bool, device=device).tril(-1)
        self._templates: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._parents: dict[tuple[int, ...], torch.Tensor] = {}  # template parents [R]

    @property
    def ids(self) -> torch.Tensor:
        """[vocab, k] int64: the stored next tokens, ``-1`` where a row has no entry."""
        rows = self._next[: self.vocab_size]
        return torch.where(rows == self.vocab_size, -1, rows)

    @property
    def probs(self) -> torch.Tensor:
        """[vocab, k] float32: their probabilities (0 where there is no entry)."""
        return self._probs[: self.vocab_size]

    def _check_ids(self, name: str, ids: torch.Tensor, low: int) -> None:
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got {ids.dtype}")
        if ids.numel():
            lo, hi = (int(v) for v in torch.aminmax(ids))
            if lo < low or hi >= self.vocab_size:
                raise ValueError(f"{name} must be in [{low}, {self.vocab_size}), got values "
                                 f"in [{lo}, {hi}]")

    def update(
        self, tokens: torch.Tensor, next_ids: torch.Tensor, next_probs: torch.Tensor,
        check: bool = True,
    ) -> None:
        """tokens [n]; next_ids [n, k] (``-1`` = no entry); next_probs [n, k] in [0, 1].

        Row ``tokens[i]`` := entry i; for a token given twice, the later entry wins.
        ``check=False`` skips the value checks (each reads a tensor on the host): the per-step
        path of a server, whose inputs are the target's own tokens and logits.
        """
        n = tokens.shape[0] if tokens.dim() == 1 else -1
        if n < 0 or next_ids.shape != (n, self.k) or next_probs.shape != (n, self.k):
            raise ValueError(f"update needs tokens [n], next_ids and next_probs [n, {self.k}], "
                             f"got {tuple(tokens.shape)}, {tuple(next_ids.shape)}, "
                             f"{tuple(next_probs.shape)}")
        if n == 0:
            return
        if check:
            self._check_ids("tokens", tokens, 0)
            self._check_ids("next_ids", next_ids, -1)
            lo, hi = (float(v) for v in torch.aminmax(next_probs.float()))
            if not (lo >= 0.0 and hi <= 1.0):  # also catches NaN
                raise ValueError(f"next_probs must be in [0, 1], got values in [{lo}, {hi}]")
        device = self._next.device
        tokens, ids = tokens.to(device), next_ids.to(device)
        probs = next_probs.to(device=device, dtype=torch.float32)
        # A repeated id within a row would make duplicate siblings: keep its first entry only.
        repeated = ((ids.unsqueeze(2) == ids.unsqueeze(1)) & self._earlier).any(dim=2)
        empty = (ids < 0) | (probs <= 0) | repeated
        ids = torch.where(empty, self.vocab_size, ids)
        probs = torch.where(empty, 0.0, probs)
        # Deterministic "last write wins" for a token given twice: write each token's last entry.
        sorted_tokens, order = torch.sort(tokens, stable=True)
        last = torch.ones(n, dtype=torch.bool, device=device)
        last[:-1] = sorted_tokens[1:] != sorted_tokens[:-1]
        rows = order[last]
        self._next[tokens[rows]] = ids[rows]
        self._probs[tokens[rows]] = probs[rows]

    def update_from_logits(self, tokens: torch.Tensor, logits: torch.Tensor,
                           check: bool = True) -> None:
        """tokens [n] (each verified node's own token); logits [n, V'] the target's there.

        ``V'`` may exceed the table's vocabulary (a padded LM head, as in SGLang): the padding
        columns are ignored. ``check`` as in ``update``.
        """
        if tokens.dim() != 1 or logits.dim() != 2 or logits.shape[0] != tokens.shape[0] or \
                logits.shape[1] < self.vocab_size:
            raise ValueError(f"update_from_logits needs tokens [n] and logits [n, >= "
                             f"{self.vocab_size}], got {tuple(tokens.shape)}, "
                             f"{tuple(logits.shape)}")
        probs = torch.softmax(logits[:, : self.vocab_size].float(), dim=-1)
        top_probs, ids = torch.topk(probs, self.k, dim=-1)
        self.update(tokens, ids, top_probs, check)

    def _levels(self, widths: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per level: (parent position within the level above [w], rank [w]) on the device.

        Every template parent lies in the level just above, so a walk needs only that level.
        """
        if widths not in self._templates:
            parents, ranks = rank_template(widths, self.k)
            device = self._next.device
            levels, start, above = [], 0, 0
            for width in widths:
                par = [p - above if p >= 0 else 0 for p in parents[start : start + width]]
                levels.append((torch.tensor(par, device=device),
                               torch.tensor(ranks[start : start + width], device=device)))
                above, start = start, start + width
            self._templates[widths] = levels
            self._parents[widths] = torch.tensor(parents, device=device)
        return self._templates[widths]

    def propose(
        self, root_tokens: torch.Tensor, widths: Sequence[int] = PAPER_WIDTHS,
        num_draft: int = 0, check: bool = True,
    ) -> RetrievedCandidates:
        """root_tokens [bs] -> ``sum(widths)`` retrieved slots per request below the root.

        ``num_draft``: draft candidates of the step (retrieved parents are offset by it in the
        combined index space of ``RetrievedCandidates``). ``check`` as in ``update``.
        """
        if root_tokens.dim() != 1:
            raise ValueError(f"root_tokens must be [bs], got shape {tuple(root_tokens.shape)}")
        if num_draft < 0:
            raise ValueError(f"num_draft must be >= 0, got {num_draft}")
        if check:
            self._check_ids("root_tokens", root_tokens, 0)
        widths = tuple(widths)
        levels = self._levels(widths)
        device = self._next.device
        bs = root_tokens.shape[0]
        tok = root_tokens.to(device).unsqueeze(1)  # [bs, 1]: the level above level 0
        prob = torch.ones(bs, 1, device=device)
        level_tokens, level_probs = [], []
        for par, rank in levels:  # one gather per level
            entry = tok[:, par] * self.k + rank  # [bs, width] flat entries of the parents' rows
            tok = torch.take(self._next, entry)
            prob = prob[:, par] * torch.take(self._probs, entry)
            level_tokens.append(tok)
            level_probs.append(prob)
        tokens, path_probs = torch.cat(level_tokens, dim=1), torch.cat(level_probs, dim=1)
        valid = path_probs > 0  # empty entries have probability 0, and so has their subtree
        parents = self._parents[widths]
        parents = torch.where(parents >= 0, parents + num_draft, -1).expand(bs, -1)
        return RetrievedCandidates(
            tokens=torch.where(valid, tokens, 0), parents=parents.clone(),
            anchors=torch.full_like(tokens, -1), path_probs=path_probs, valid=valid,
        )

    @property
    def num_slots(self) -> int:
        """Slots of a ``retrieve_step`` answer: the template's nodes."""
        return sum(self.widths)

    def retrieve_step(self, query: StepQuery) -> RetrievedCandidates:
        """``StepRetrieval``: ``propose`` from ``query.roots`` along ``widths`` (device ops,
        no host read unless ``query.check``)."""
        return self.propose(query.roots, self.widths, query.num_draft, check=query.check)
