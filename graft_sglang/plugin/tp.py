"""Tensor-parallel consistency of Graft trees.

Every TP rank runs its own scheduler and GRAFT worker, and all ranks must verify the same tree.

Default: **deterministic build**. The builder's inputs are identical on every rank: the draft
loop's logits come out of all-reduce / all-gather collectives that hand every rank the same
bits (SGLang's own EAGLE tree build relies on this on CUDA), the request tokens are the same,
and the retrieval index receives the same inserts in the same order (it is a pure function of
them: no string hashing, clocks or thread timing; the radix cache it mirrors is driven by the
same scheduling decisions on every rank). Extra cost per step: nothing.

Switch (``SGLANG_GRAFT_TP_BROADCAST=1``): **broadcast from rank 0** the tree's tokens, parents,
sources and scores (``4 * bs * N`` int64: 128 KiB at bs = 64, N = 64; one NCCL broadcast, tens
of microseconds on NVLink, but a synchronisation point that serialises the ranks every step) and
rebuild the layout locally. Worth it where ranks can draw different draft tokens: SGLang notes
this on ROCm, where it broadcasts the verify result for the same reason.
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
