"""Tensor-parallel consistency of Graft trees.

Every TP rank runs its own scheduler and GRAFT worker, and all ranks must verify the same tree.

Default: **deterministic build**. The builder's inputs are identical on every rank: the draft
loop's logits are gathered across ranks before top-k, the request tokens are the same, and the
retrieval index receives the same inserts in the same order (it is a pure function of them: no
hashing of strings, no clocks, no thread timing). This costs nothing per step.

Safety switch (``SGLANG_GRAFT_TP_BROADCAST=1``): **broadcast from rank 0** the tree's tokens and
parents (``2 * bs * N`` int64: 64 KB at bs = 64, N = 64) and rebuild the layout locally. One
extra collective per step, a synchronisation point: worth it only if a rank could diverge (for
example a retrieval corpus fed differently on some rank).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.layout import tree_layout


def broadcast_tree(tree: GraftTree, broadcast: Callable[[torch.Tensor], object]) -> GraftTree:
    """Every rank gets the source rank's tree (tokens, parents, scores, sources; the layout is
    rebuilt locally). ``broadcast`` broadcasts a tensor in place from the source rank, e.g.
    SGLang's ``get_parallel().tp_group.broadcast`` or ``torch.distributed.broadcast``."""
    payload = torch.stack([tree.tokens, tree.parents, tree.source,
                           tree.scores.double().view(torch.int64)])
    broadcast(payload)
    tokens, parents, source, scores = payload.unbind(0)
    layout = tree_layout(parents, tree.layout.positions[:, 0])
    return GraftTree(tokens.clone(), parents.clone(), scores.view(torch.float64).float(),
                     source.clone(), layout)


def trees_agree(tree: GraftTree, group: dist.ProcessGroup | None = None) -> bool:
    """Whether every rank holds the same tree (a check for tests and debugging)."""
    local = torch.stack([tree.tokens, tree.parents, tree.source])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return all(torch.equal(g, gathered[0]) for g in gathered)
