"""Tensor-parallel consistency of Graft trees and of the decisions that shape the draft loop.

Every TP rank runs its own scheduler and GRAFT worker, and all ranks must verify the same tree
and run the same draft forward passes (each holds collectives the other ranks wait in).
Attention data parallelism, where ranks hold different batches, is refused at start-up
(``plugin/algo.py``), so the ranks of SGLang's TP group share one batch.

At start-up the ranks agree on their settings (``agree_settings``): ``SGLANG_GRAFT_*`` and the
head's ``calibration.json`` are read per rank, and on a multi-node deployment they can differ.

Default: **deterministic build**. The builder's inputs are identical on every rank: the draft
loop's logits come out of all-reduce / all-gather collectives that hand every rank the same
bits (SGLang's own EAGLE tree build relies on this on CUDA), the request tokens are the same,
and the retrieval index receives the same inserts in the same order (it is a pure function of
them: no string hashing, clocks or thread timing; the radix cache it mirrors is driven by the
same scheduling decisions on every rank). The stop-drafting decisions are functions of the same
inputs, so they agree too. Extra cost per step: nothing.

Switch (``SGLANG_GRAFT_TP_BROADCAST=1``): **broadcast from rank 0** the tree's tokens, parents,
sources and scores (``4 * bs * N`` int64: 128 KiB at bs = 64, N = 64; one broadcast, and a
synchronisation point that serialises the ranks every step) and rebuild the layout locally; the
stop-drafting decisions are rank 0's too (one one-element broadcast per checked level, where a
host read happens anyway). Worth it where ranks can draw different draft tokens: SGLang notes
this on ROCm, where it broadcasts the verify result for the same reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.layout import tree_layout

Broadcast = Callable[[torch.Tensor], object]
"""Broadcasts a tensor in place from rank 0, e.g. ``functools.partial(group.broadcast, src=0)``
of SGLang's TP ``GroupCoordinator``, or ``torch.distributed.broadcast``."""


def broadcast_tree(tree: GraftTree, broadcast: Broadcast) -> GraftTree:
    """Every rank gets the source rank's tree (tokens, parents, scores, sources; the layout is
    rebuilt locally)."""
    payload = torch.stack([tree.tokens, tree.parents, tree.source,
                           tree.scores.double().view(torch.int64)])
    broadcast(payload)
    tokens, parents, source, scores = payload.unbind(0)
    layout = tree_layout(parents, tree.layout.positions[:, 0])
    return GraftTree(tokens.clone(), parents.clone(), scores.view(torch.float64).float(),
                     source.clone(), layout)


def broadcast_flag(flag: torch.Tensor, broadcast: Broadcast) -> bool:
    """Rank 0's value of the 0-dim bool ``flag`` on every rank (one host read)."""
    value = flag.reshape(1).to(torch.int64)
    broadcast(value)
    return bool(value)


def agree_settings(settings: GraftSettings, group: Any) -> None:
    """Refuse to start unless every rank of ``group`` (SGLang's TP ``GroupCoordinator``) holds
    the same settings: one ``all_gather_object`` at start-up. Raises ValueError naming each
    setting that differs and a rank that has it differently."""
    if group.world_size == 1:
        return
    gathered: list[GraftSettings] = group.all_gather_object(settings)
    for rank, other in enumerate(gathered):
        differing = gathered[0].differences(other)
        if differing:
            raise ValueError(
                f"GRAFT settings differ between TP ranks 0 and {rank} (rank 0's != rank "
                f"{rank}'s): {'; '.join(differing)}. Give every rank the same SGLANG_GRAFT_* "
                f"environment and the same calibration.json in the draft head's directory")


def trees_agree(tree: GraftTree, group: dist.ProcessGroup | None = None) -> bool:
    """Whether every rank holds the same tree (a check for tests and debugging)."""
    local = torch.stack([tree.tokens, tree.parents, tree.source])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, local, group=group)
    return all(torch.equal(g, gathered[0]) for g in gathered)
