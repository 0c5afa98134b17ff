"""The paper's retrieval source: a device-resident successor table fed by the target's logits.

``table[v]`` holds the ``k`` most likely next tokens after token ``v`` (and their probabilities)
as last seen in the target's verification logits: every verified tree node, accepted or not,
rewrites the row of its own token (Token Recycling's mechanism). Rows never written propose
nothing. A proposal walks a fixed, lopsided rank template from the root token (one batched
gather per level, no host round trip): level ``d`` has ``widths[d]`` nodes, node ``(parent,
rank)`` gets token ``table[token(parent), rank]``, and the template prefers low rank sums, so
the rank-0 chain runs deepest. Siblings come from one row, hence are distinct. Identical
updates give identical tables on every tensor-parallel rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from graft_sglang.tree.retrieved import RetrievedCandidates

PAPER_WIDTHS = (8, 10, 8, 6, 5, 4, 4, 4, 3)


def rank_template(widths: Sequence[int], k: int) -> tuple[list[int], list[int]]:
    """Parents (template index, -1 = root) and ranks of a lopsided template, level by level.

    Candidate (parent j, rank r) costs ``cost(j) + r``; each level keeps its ``widths[d]``
    cheapest candidates (ties: earlier parent, then lower rank).
    """
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths must be positive, got {tuple(widths)}")
    if widths[0] > k:
        raise ValueError(f"widths[0] = {widths[0]} exceeds the table width k = {k}")
    parents: list[int] = []
    ranks: list[int] = []
    level = [(-1, 0)]  # (template index, cost) of the previous level
    for width in widths:
        cands = sorted(
            ((cost + r, order, idx, r) for order, (idx, cost) in enumerate(level)
             for r in range(k)),
        )[:width]
        nxt = []
        for cost, _, parent, r in sorted(cands, key=lambda c: (c[1], c[3])):
            parents.append(parent)
            ranks.append(r)
            nxt.append((len(parents) - 1, cost))
        level = nxt
    return parents, ranks


class SuccessorTable:
    """``[vocab, k]`` next-token table (see module docstring)."""

    def __init__(self, vocab_size: int, k: int = 10, device: torch.device | str = "cpu") -> None:
        if vocab_size < 1 or k < 1:
            raise ValueError(f"vocab_size and k must be >= 1, got {vocab_size}, {k}")
        self.vocab_size, self.k = vocab_size, k
        self.ids = torch.full((vocab_size, k), -1, dtype=torch.int64, device=device)
        self.probs = torch.zeros(vocab_size, k, dtype=torch.float32, device=device)

    def update(
        self, tokens: torch.Tensor, next_ids: torch.Tensor, next_probs: torch.Tensor
    ) -> None:
        """tokens [n]; next_ids / next_probs [n, k]: row ``tokens[i]`` := entry i (last wins)."""
        if next_ids.shape != (tokens.shape[0], self.k) or next_probs.shape != next_ids.shape:
            raise ValueError(f"next_ids and next_probs must be [{tokens.shape[0]}, {self.k}]")
        if tokens.numel() == 0:
            return
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"tokens must be in [0, {self.vocab_size})")
        # Deterministic "last write wins" for repeated tokens: keep each token's last entry.
        n = tokens.shape[0]
        order = torch.arange(n, device=tokens.device)
        last = torch.full((self.vocab_size,), -1, dtype=torch.int64, device=tokens.device)
        last.scatter_reduce_(0, tokens, order, reduce="amax")
        keep = last[tokens] == order
        self.ids[tokens[keep]] = next_ids[keep].to(self.ids)
        self.probs[tokens[keep]] = next_probs[keep].float().to(self.probs)

    def update_from_logits(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """tokens [n] (each verified node's own token); logits [n, V] the target's at that node."""
        if logits.shape != (tokens.shape[0], self.vocab_size):
            raise ValueError(f"logits must be [{tokens.shape[0]}, {self.vocab_size}]")
        probs, ids = torch.topk(torch.softmax(logits.float(), dim=-1), self.k, dim=-1)
        self.update(tokens, ids, probs)

    def propose(
        self, root_tokens: torch.Tensor, widths: Sequence[int] = PAPER_WIDTHS,
        num_draft: int = 0,
    ) -> RetrievedCandidates:
        """root_tokens [bs] -> ``sum(widths)`` retrieved slots per request below the root."""
        parents, ranks = rank_template(widths, self.k)
        device = self.ids.device
        bs, r = root_tokens.shape[0], len(parents)
        par = torch.tensor(parents, device=device)
        rank = torch.tensor(ranks, device=device)
        tokens = torch.zeros(bs, r, dtype=torch.int64, device=device)
        probs = torch.zeros(bs, r, dtype=torch.float32, device=device)
        valid = torch.zeros(bs, r, dtype=torch.bool, device=device)
        root = root_tokens.to(device=device, dtype=torch.int64)
        start = 0
        for width in widths:  # one gather per level
            sl = slice(start, start + width)
            p = par[sl]
            from_root = p < 0
            parent_tok = torch.where(from_root, root.unsqueeze(1), tokens[:, p.clamp(min=0)])
            parent_ok = from_root | valid[:, p.clamp(min=0)]
            parent_prob = torch.where(from_root, torch.ones_like(probs[:, sl]),
                                      probs[:, p.clamp(min=0)])
            row_ids = self.ids[parent_tok.clamp(min=0)]  # [bs, width, k]
            row_probs = self.probs[parent_tok.clamp(min=0)]
            idx = rank[sl].view(1, width, 1).expand(bs, width, 1)
            tok = torch.gather(row_ids, 2, idx).squeeze(2)
            prob = torch.gather(row_probs, 2, idx).squeeze(2)
            ok = parent_ok & (tok >= 0) & (prob > 0)
            tokens[:, sl] = torch.where(ok, tok, torch.zeros_like(tok))
            probs[:, sl] = torch.where(ok, parent_prob * prob, torch.zeros_like(prob))
            valid[:, sl] = ok
            start += width
        parents_combined = torch.where(par < 0, par, par + num_draft).expand(bs, r).clone()
        return RetrievedCandidates(
            tokens=tokens, parents=parents_combined,
            anchors=torch.full((bs, r), -1, dtype=torch.int64, device=device),
            path_probs=probs.clamp(max=1.0), valid=valid,
        )
