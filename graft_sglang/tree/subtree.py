"""Sub-trees of a built tree: the first ``n`` nodes of a selection order, verified alone, and
the one-node tree of a plain step.

A selection order that ranks every node after its ancestors (e.g. by reach probability, which
never grows along a path, ties by index) makes each of its prefixes ancestor-closed, so a
prefix is a tree with the same root. ``keep_prefix`` re-indexes it in ascending original order
(parents keep preceding children) and rebuilds the layout (``tree.layout``).
"""

from __future__ import annotations

import torch

from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.layout import tree_layout


def keep_prefix(tree: GraftTree, order: torch.Tensor, n: int, check: bool = True) -> GraftTree:
    """The sub-trees of the first ``n`` nodes of each request's ``order``.

    order: [bs, N] int64, a permutation of each row's nodes with the root (0) first.
    Returns a ``GraftTree`` of exactly ``n`` nodes per request; its positions keep the original
    depths (``seq_lens`` = the root's position). ``check`` (a host read) raises ``ValueError``
    if a prefix is not ancestor-closed. O(bs * N log N + layout).
    """
    bs, size = tree.tokens.shape
    if tuple(order.shape) != (bs, size):
        raise ValueError(f"order must be [{bs}, {size}], got {tuple(order.shape)}")
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}], got {n}")
    device = tree.tokens.device
    idx = torch.sort(order[:, :n], dim=1).values  # kept nodes in topological order
    if check and bool((idx[:, 0] != 0).any()):
        raise ValueError("every order must start with the root (node 0)")
    new_of = torch.full((bs, size), -1, dtype=torch.int64, device=device)
    new_of.scatter_(1, idx, torch.arange(n, device=device).expand(bs, n))
    old_parent = torch.gather(tree.parents, 1, idx)
    parents = torch.where(old_parent >= 0, torch.gather(new_of, 1, old_parent.clamp(min=0)),
                          old_parent)
    if check and bool((parents[:, 1:] < 0).any()):
        raise ValueError("a prefix of the order is not ancestor-closed: a node's parent was cut")
    seq_lens = tree.layout.positions[:, 0]
    return GraftTree(torch.gather(tree.tokens, 1, idx), parents,
                     torch.gather(tree.scores, 1, idx), torch.gather(tree.source, 1, idx),
                     tree_layout(parents, seq_lens))


def root_only(roots: torch.Tensor, seq_lens: torch.Tensor) -> GraftTree:
    """One-node trees: each request's root alone (roots, seq_lens [bs]), i.e. a plain decode
    step through the verify path."""
    bs = roots.shape[0]
    device = roots.device
    parents = torch.full((bs, 1), -1, dtype=torch.int64, device=device)
    return GraftTree(roots.to(torch.int64).view(bs, 1), parents,
                     torch.ones(bs, 1, device=device),
                     torch.zeros(bs, 1, dtype=torch.int64, device=device),
                     tree_layout(parents, seq_lens))
