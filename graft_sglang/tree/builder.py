"""Prune-then-graft tree builder (pure PyTorch, batched).

One step, per request:

1. **Score** every candidate on one scale, the estimated probability that verification reaches it:
   a draft node's cumulative draft confidence; a retrieved node's trie path probability (times
   ``retrieval_weight``) times the confidence of the draft node it hangs below (1 for the root).
2. **Prune** draft nodes whose confidence is below ``threshold``, below ``relative`` times the
   request's best draft confidence, or outside the ``draft_quota`` most confident. Pruned nodes
   are not dropped but demoted below every kept node, so they only top up a budget that
   retrieval could not fill.
3. **Graft** (trie merge): a candidate with the same token as an earlier sibling (same merged
   parent) is merged into it, keeping the larger score and both source flags. Greedy verification
   accepts the first matching child, so a duplicate sibling would be dead weight.
4. **Select** exactly ``budget - 1`` nodes by score (ties: lower index first). Scores never grow
   along a path and parents precede children, so the selection is ancestor-closed. If fewer
   candidates exist, the tree is padded with a filler chain below the root (tokens that cannot
   duplicate a sibling), keeping the width fixed for CUDA graphs and KV windows.
5. **Emit** tokens, parents, scores, sources and the SGLang layout (``tree.layout``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag

import torch

from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.layout import TreeLayout, tree_layout
from graft_sglang.tree.retrieved import RetrievedCandidates

# Demoted (pruned) keys live in [-2, -1); padding is below everything.
_PRUNED_OFFSET = 2.0
_INVALID_KEY = -10.0


class NodeSource(IntFlag):
    """Where a tree node came from (flags: a merged node can be both)."""

    ROOT = 0
    DRAFT = 1
    RETRIEVED = 2
    FILLER = 4


@dataclass(frozen=True)
class GraftConfig:
    """Settings of the tree builder.

    budget:           N, nodes per tree including the root (fixed width handed to verify).
    threshold:        absolute pruning threshold on cumulative draft confidence, in (0, 1];
                      ``None`` disables it.
    relative:         prune draft nodes below ``relative * best confidence``, in (0, 1]; ``None``
                      disables it.
    draft_quota:      prune all but the ``draft_quota`` most confident draft nodes (ties: lower
                      index first), e.g. the paper's stage split (8 / 24 / 40 of K = 60);
                      ``None`` disables it.
    retrieval_weight: multiplier on retrieved path probabilities, in (0, 1] (calibration of
                      retrieval frequencies against draft confidences).
    top_up_pruned:    whether demoted draft nodes may fill slots retrieval left empty (a fixed
                      width needs it; the ``pruned`` method of the offline engine does not).
    vocab_size:       if set, every token id is checked to lie in ``[0, vocab_size)``.
    check_inputs:     check input values (token ranges, scores, parent links); each check reads
                      a tensor on the host, so a server's per-step path turns them off.
    """

    budget: int = 32
    threshold: float | None = 0.1
    relative: float | None = None
    draft_quota: int | None = None
    retrieval_weight: float = 1.0
    top_up_pruned: bool = True
    vocab_size: int | None = None
    check_inputs: bool = True

    def __post_init__(self) -> None:
        if self.budget < 2:
            raise ValueError(f"budget must be >= 2 (root plus one node), got {self.budget}")
        for name in ("threshold", "relative"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1] or None, got {value}")
        if self.draft_quota is not None and self.draft_quota < 0:
            raise ValueError(f"draft_quota must be >= 0 or None, got {self.draft_quota}")
        if not (0.0 < self.retrieval_weight <= 1.0):
            raise ValueError(f"retrieval_weight must be in (0, 1], got {self.retrieval_weight}")
        if self.vocab_size is not None and self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")


@dataclass(frozen=True)
class GraftTree:
    """A batch of verification trees of exactly N nodes (node 0 = root = last verified token).

    tokens:  [bs, N] int64.
    parents: [bs, N] int64 (``-1`` for the root, else a smaller index).
    scores:  [bs, N] float32, estimated reach probability (root 1, filler 0).
    source:  [bs, N] int64 ``NodeSource`` flags.
    layout:  ancestors / depth / positions / retrieve_* (``tree.layout.TreeLayout``).
    """

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor
    source: torch.Tensor
    layout: TreeLayout

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def budget(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_real(self) -> torch.Tensor:
        """[bs] number of non-filler nodes (root included); fillers are always the last slots."""
        return (self.source & NodeSource.FILLER == 0).sum(dim=1)

    def truncated(self, n: int) -> GraftTree:
        """The first ``n`` nodes of every tree (a variable-size tree for engines that do not
        need a fixed width); links never point past ``n``."""
        if not 1 <= n <= self.budget:
            raise ValueError(f"n must be in [1, {self.budget}], got {n}")
        return GraftTree(self.tokens[:, :n], self.parents[:, :n], self.scores[:, :n],
                         self.source[:, :n], self.layout.truncated(n))


def _check_tokens(name: str, tokens: torch.Tensor, vocab_size: int | None) -> None:
    if tokens.numel() == 0 or vocab_size is None:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} has token ids in [{lo}, {hi}], outside [0, {vocab_size})")


def _validate(
    root_tokens: torch.Tensor,
    seq_lens: torch.Tensor,
    draft: DraftCandidates,
    retrieved: RetrievedCandidates,
    config: GraftConfig,
    draft_quotas: torch.Tensor | None = None,
) -> None:
    """Shapes always (host metadata); values only with ``config.check_inputs`` (host reads)."""
    bs = root_tokens.shape[0]
    if root_tokens.dim() != 1:
        raise ValueError(f"root_tokens must be [bs], got shape {tuple(root_tokens.shape)}")
    if tuple(seq_lens.shape) != (bs,):
        raise ValueError(f"seq_lens must be [{bs}], got shape {tuple(seq_lens.shape)}")
    if draft.batch_size != bs or retrieved.batch_size != bs:
        raise ValueError(
            f"batch sizes differ: root_tokens {bs}, draft {draft.batch_size}, "
            f"retrieved {retrieved.batch_size}"
        )
    if draft_quotas is not None and tuple(draft_quotas.shape) != (bs,):
        raise ValueError(f"draft_quotas must be [bs] = [{bs}], got {tuple(draft_quotas.shape)}")
    if not config.check_inputs:
        return
    if draft_quotas is not None and draft_quotas.numel() and int(draft_quotas.min()) < 0:
        raise ValueError("draft_quotas must be >= 0 (the draft nodes each request keeps)")
    for name, t in (
        ("root_tokens", root_tokens), ("draft.tokens", draft.tokens),
        ("retrieved.tokens", retrieved.tokens[retrieved.valid]),
    ):
        _check_tokens(name, t, config.vocab_size)
    if draft.num_candidates:
        s = draft.scores
        if bool(torch.isnan(s).any()) or float(s.min()) < 0.0 or float(s.max()) > 1.0 + 1e-5:
            raise ValueError("draft.scores must be cumulative probabilities in [0, 1] (no NaN)")
        ar = torch.arange(draft.num_candidates, device=s.device)
        if bool((draft.parents >= ar).any()) or bool((draft.parents < -1).any()):
            raise ValueError("draft.parents must satisfy -1 <= parents[b, i] < i")
    m, r = draft.num_candidates, retrieved.num_slots
    probs = retrieved.path_probs[retrieved.valid]
    if probs.numel() and (float(probs.min()) <= 0.0 or float(probs.max()) > 1.0 + 1e-6):
        raise ValueError("retrieved.path_probs of valid slots must be in (0, 1]")
    if r:
        own = m + torch.arange(r, device=retrieved.parents.device)
        bad = retrieved.valid & ((retrieved.parents >= own) | (retrieved.parents < -1))
        if bool(bad.any()):
            raise ValueError("retrieved.parents must point at the root, a draft or an earlier slot")


def _ancestor_jumps(parents: torch.Tensor, may_read: bool) -> list[torch.Tensor]:
    """Pointer-doubling tables: ``jumps[k]`` [bs, C + 1] int64 is each candidate's 2^k-th
    ancestor, C where there is none (column C, "none", points at itself). Depth <= C, so
    ceil(log2 C) tables cover every path; ``may_read``: stop once one has no ancestor left (a
    host read per table). O(bs C log C)."""
    bs, c = parents.shape
    jump = torch.cat([torch.where(parents >= 0, parents, c),
                      torch.full((bs, 1), c, dtype=parents.dtype, device=parents.device)], dim=1)
    jumps: list[torch.Tensor] = []
    for _ in range(math.ceil(math.log2(c)) if c > 1 else 0):
        if may_read and not bool((jump[:, :c] < c).any()):
            break
        jumps.append(jump)
        jump = torch.gather(jump, 1, jump)
    return jumps


def _min_along_paths(key: torch.Tensor, jumps: list[torch.Tensor]) -> torch.Tensor:
    """key [bs, C] -> min over each candidate's ancestors-or-self (``_ancestor_jumps``)."""
    out = torch.cat([key, torch.full_like(key[:, :1], math.inf)], dim=1)
    for jump in jumps:
        out = torch.minimum(out, torch.gather(out, 1, jump))
    return out[:, :-1]


def _dense_rank(values: torch.Tensor) -> torch.Tensor:
    """[bs, K] int64 -> [bs, K] int64 in [0, K): equal values of a row get equal ranks, and
    ranks follow the values' order. One batched sort, no host read."""
    ordered, idx = torch.sort(values, dim=1)
    steps = torch.diff(ordered, dim=1, prepend=ordered[:, :1]) != 0
    return torch.empty_like(idx).scatter_(1, idx, torch.cumsum(steps, dim=1))


def _merge_duplicates(
    tokens: torch.Tensor, valid: torch.Tensor, jumps: list[torch.Tensor], may_read: bool
) -> torch.Tensor:
    """Canonical index of each candidate: the first one with the same merged parent and token.

    tokens/valid: [bs, C]; jumps: ``_ancestor_jumps`` of the parents. Returns canon [bs, C] int64
    (``canon[i] <= i``). By induction over depth, two valid candidates share a canon iff their
    token strings up to the root are equal (an invalid candidate is a symbol of its own).
    Prefix doubling computes those classes: after the round of ``jumps[k]`` a class is the
    string's first 2^(k+1) symbols upward. ``may_read``: stop once a round leaves the classes
    as they were (then no later round changes them; a host read per round). O(bs C log^2 C).
    """
    bs, c = tokens.shape
    ar = torch.arange(c, device=tokens.device).expand(bs, c)
    # Classes in [0, 2C + 1): 0 is "none" (column C, past the root), then tokens, then the
    # invalid candidates.
    rank = torch.cat([torch.where(valid, _dense_rank(tokens) + 1, c + 1 + ar),
                      torch.zeros_like(tokens[:, :1])], dim=1)
    for k, jump in enumerate(jumps):
        # "none" stays the unique smallest pair, so it keeps rank 0.
        new = _dense_rank(torch.add(torch.gather(rank, 1, jump), rank, alpha=2 * c + 2))
        # From round 1 on the ranks are dense, so equal ranks mean equal classes.
        stable = may_read and k > 0 and torch.equal(new, rank)
        rank = new
        if stable:
            break
    rank = rank[:, :c]
    first = torch.full((bs, 2 * c + 1), c, dtype=torch.int64, device=tokens.device)
    first.scatter_reduce_(1, rank, ar, reduce="amin", include_self=True)
    return torch.gather(first, 1, rank)


def prune_mask(draft_scores: torch.Tensor, config: GraftConfig,
               draft_quotas: torch.Tensor | None = None) -> torch.Tensor:
    """[bs, M] cumulative draft confidences -> [bs, M] bool, True where ``config`` prunes:
    below ``threshold``, below ``relative`` x the request's best, or outside the
    ``draft_quota`` most confident (ties: lower index first). ``draft_quotas`` [bs] int64, if
    given, replaces ``config.draft_quota`` per request (e.g. the stage each request stopped at)."""
    pruned = torch.zeros_like(draft_scores, dtype=torch.bool)
    m = draft_scores.shape[1]
    if m == 0:
        return pruned
    if config.threshold is not None:
        pruned |= draft_scores < config.threshold
    if config.relative is not None:
        pruned |= draft_scores < config.relative * draft_scores.max(dim=1, keepdim=True).values
    quota = (draft_quotas.to(draft_scores.device)[:, None] if draft_quotas is not None
             else config.draft_quota)
    if draft_quotas is not None or (quota is not None and quota < m):
        order = torch.sort(draft_scores, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(m, device=draft_scores.device).expand_as(order))
        pruned |= rank >= quota
    return pruned


def count_grafted(source: Sequence[int], nodes: Sequence[int]) -> int:
    """How many of ``nodes`` (tree indices) came from retrieval alone (``source``: one tree's
    ``NodeSource`` flags)."""
    return sum(1 for i in nodes
               if source[i] & NodeSource.RETRIEVED and not source[i] & NodeSource.DRAFT)


@dataclass(frozen=True)
class _Pool:
    """All candidates of a step: draft candidates then retrieved slots. Every field [bs, C]."""

    tokens: torch.Tensor
    parents: torch.Tensor
    scores: torch.Tensor
    source: torch.Tensor
    valid: torch.Tensor
    pruned: torch.Tensor


def _candidate_pool(
    draft: DraftCandidates, retrieved: RetrievedCandidates, config: GraftConfig,
    device: torch.device, draft_quotas: torch.Tensor | None = None,
) -> _Pool:
    """Steps 1-2: score every candidate on one scale and mark pruned draft nodes."""
    m = draft.num_candidates
    draft_scores = draft.scores.float().to(device)
    ones = torch.ones_like(retrieved.path_probs)
    anchor_scores = ones
    if m:
        anchor_scores = torch.where(
            retrieved.anchors >= 0,
            torch.gather(draft_scores, 1, retrieved.anchors.clamp(min=0)), ones,
        )
    retrieved_scores = retrieved.path_probs.float() * config.retrieval_weight * anchor_scores
    source = torch.cat([
        torch.full_like(draft.tokens, int(NodeSource.DRAFT)),
        torch.full_like(retrieved.tokens, int(NodeSource.RETRIEVED)),
    ], dim=1).to(device)
    pruned = prune_mask(draft_scores, config, draft_quotas)
    return _Pool(
        tokens=torch.cat([draft.tokens.to(device), retrieved.tokens], dim=1),
        parents=torch.cat([draft.parents.to(device), retrieved.parents], dim=1),
        scores=torch.cat([draft_scores, retrieved_scores], dim=1),
        source=source,
        valid=torch.cat([torch.ones_like(pruned), retrieved.valid], dim=1),
        pruned=torch.cat([pruned, torch.zeros_like(retrieved.valid)], dim=1),
    )


def build_graft_tree(
    root_tokens: torch.Tensor,
    seq_lens: torch.Tensor,
    draft: DraftCandidates,
    retrieved: RetrievedCandidates,
    config: GraftConfig,
    draft_quotas: torch.Tensor | None = None,
) -> GraftTree:
    """Build one step's verification trees.

    root_tokens:  [bs] int64, the last verified (bonus) token of each request: node 0.
    seq_lens:     [bs] int64, tokens before the root (the root sits at position ``seq_lens``).
    draft:        draft candidates (``DraftCandidates.empty`` for retrieval only).
    retrieved:    retrieved candidates (``RetrievedCandidates.empty`` for draft only).
    draft_quotas: [bs] int64 or None, per-request ``draft_quota`` (see ``prune_mask``); >= 0
                  (checked with ``config.check_inputs``).

    With ``config.check_inputs`` off nothing is read on the host (no value checks, no early
    exits), so on an accelerator the build queues without a sync. ValueError for bad shapes
    (always) or values (with the checks).
    """
    _validate(root_tokens, seq_lens, draft, retrieved, config, draft_quotas)
    bs, n = root_tokens.shape[0], config.budget
    device = root_tokens.device
    pool = _candidate_pool(draft, retrieved, config, device, draft_quotas)
    c = pool.tokens.shape[1]

    # Pruned nodes (and everything below them) rank after every kept node.
    key = pool.scores - _PRUNED_OFFSET * pool.pruned.float()
    jumps = _ancestor_jumps(pool.parents, may_read=config.check_inputs)
    key = _min_along_paths(torch.where(pool.valid, key, torch.full_like(key, _INVALID_KEY)),
                           jumps)
    valid = pool.valid if config.top_up_pruned else pool.valid & (key > -1.0)

    # 3. Graft: merge duplicate siblings into their first occurrence.
    canon = _merge_duplicates(pool.tokens, valid, jumps, may_read=config.check_inputs)
    merged_key = torch.full_like(key, _INVALID_KEY).scatter_reduce(
        1, canon, key, reduce="amax", include_self=True
    )
    zero_f = torch.zeros_like(pool.scores)
    merged_score = zero_f.scatter_reduce(
        1, canon, torch.where(valid, pool.scores, zero_f), reduce="amax", include_self=True
    )
    merged_source = torch.zeros_like(pool.source)
    for flag in (NodeSource.DRAFT, NodeSource.RETRIEVED):  # bitwise OR over each group
        has = torch.where(valid, pool.source & int(flag), torch.zeros_like(pool.source))
        merged_source |= torch.zeros_like(has).scatter_reduce(
            1, canon, has, reduce="amax", include_self=True
        )
    is_canon = (canon == torch.arange(c, device=device)) & valid

    # 4. Select the best budget-1 canonical nodes (ancestor-closed by construction), then put
    # them in ascending pool order, which is topological.
    k_slots = n - 1
    order = torch.sort(torch.where(is_canon, merged_key, torch.full_like(key, 2 * _INVALID_KEY)),
                       dim=1, descending=True, stable=True).indices
    if c < k_slots:  # column c is a never-available dummy
        order = torch.cat([order, torch.full((bs, k_slots - c), c, device=device)], dim=1)
    chosen = order[:, :k_slots]
    avail = torch.cat([is_canon, torch.zeros(bs, 1, dtype=torch.bool, device=device)], dim=1)
    chosen_ok = torch.gather(avail, 1, chosen)
    chosen = torch.sort(torch.where(chosen_ok, chosen, chosen + c + 1), dim=1).values
    chosen_ok = chosen <= c - 1
    chosen = torch.where(chosen_ok, chosen, torch.zeros_like(chosen))

    # 5. Slots: 0 = root, 1..k = chosen nodes, k+1.. = filler chain.
    slot_of = torch.zeros(bs, c + 1, dtype=torch.int64, device=device)  # pool index -> slot
    slot_of.scatter_(1, torch.where(chosen_ok, chosen, torch.full_like(chosen, c)),
                     torch.arange(1, n, device=device).expand(bs, k_slots))
    slot_of[:, c] = 0
    if c:
        pool_parent = torch.gather(pool.parents, 1, chosen)
        canon_parent = torch.gather(canon, 1, pool_parent.clamp(min=0))
        slot_parent = torch.where(pool_parent >= 0, torch.gather(slot_of, 1, canon_parent),
                                  torch.zeros_like(pool_parent))
        out_tokens = torch.gather(pool.tokens, 1, chosen)
        out_scores = torch.gather(merged_score, 1, chosen)
        out_source = torch.gather(merged_source, 1, chosen)
    else:
        slot_parent = torch.zeros_like(chosen)
        out_tokens = torch.zeros_like(chosen)
        out_scores = torch.zeros(bs, k_slots, device=device)
        out_source = torch.zeros_like(chosen)
    out_tokens, slot_parent, out_scores, out_source = _fill(
        chosen_ok, out_tokens, slot_parent, out_scores, out_source, config
    )
    root = root_tokens.to(torch.int64).unsqueeze(1)
    layout = tree_layout(torch.cat([torch.full_like(root, -1), slot_parent], dim=1),
                         seq_lens.to(device))
    return GraftTree(
        tokens=torch.cat([root, out_tokens], dim=1),
        parents=torch.cat([torch.full_like(root, -1), slot_parent], dim=1),
        scores=torch.cat([torch.ones(bs, 1, device=device), out_scores.float()], dim=1),
        source=torch.cat([torch.zeros_like(root), out_source], dim=1),
        layout=layout,
    )


def _fill(
    chosen_ok: torch.Tensor, tokens: torch.Tensor, parents: torch.Tensor, scores: torch.Tensor,
    source: torch.Tensor, config: GraftConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace unchosen slots [bs, N-1] by a filler chain below the root.

    The first filler takes the smallest token id no root child uses (so it duplicates no sibling);
    each further filler is the only child of the previous one.
    """
    bs, k_slots = tokens.shape
    n = k_slots + 1
    device = tokens.device
    root_child = chosen_ok & (parents == 0) & (tokens < n)
    used = torch.zeros(bs, n + 1, dtype=torch.bool, device=device)
    used.scatter_(1, torch.where(root_child, tokens, torch.full_like(tokens, n)), root_child)
    filler_token = torch.argmin(used[:, :n].to(torch.int8), dim=1, keepdim=True)
    pos = torch.arange(k_slots, device=device).expand(bs, k_slots)
    first_filler = chosen_ok.sum(dim=1, keepdim=True)
    filler_parent = torch.where(pos == first_filler, torch.zeros_like(pos), pos)
    is_filler = ~chosen_ok
    return (
        torch.where(is_filler, filler_token.expand_as(tokens), tokens),
        torch.where(is_filler, filler_parent, parents),
        torch.where(is_filler, torch.zeros_like(scores), scores),
        torch.where(is_filler, torch.full_like(source, int(NodeSource.FILLER)), source),
    )
