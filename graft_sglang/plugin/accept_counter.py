"""Per-source acceptance counters kept on the device: the worker reads nothing per step.

Counting on the host (``accept_index.cpu()`` right after the verify) holds the scheduler
thread until the verify of the step just launched has finished. Under the overlap schedule
that is the very work it should overlap (processing the previous step's result, scheduling the
next one), so ``AcceptCounter.add`` only enqueues device ops and ``totals`` reads the two
counters when metrics or a periodic log line ask for them (one small host read then).
"""

from __future__ import annotations

import torch

from graft_sglang.tree.builder import NodeSource


class AcceptCounter:
    """Accepted tokens (bonus excluded) by the source of their tree node, summed over steps."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self._counts = torch.zeros(2, dtype=torch.int64, device=device)  # [accepted, grafted]
        self.steps = 0

    def add(self, source: torch.Tensor, accept_index: torch.Tensor,
            accept_lens: torch.Tensor) -> None:
        """One verified step: source [bs, N] ``NodeSource`` flags of each request's tree,
        accept_index [bs, S] the accepted nodes as flat ids ``b * N + i`` (the root first),
        accept_lens [bs] accepted tokens including the bonus. A node counts as grafted when
        retrieval alone proposed it (``count_grafted``'s rule). Device ops only, O(bs * S);
        raises ValueError when the two batches differ."""
        if accept_index.shape[0] != source.shape[0]:
            raise ValueError(f"accept_index has {accept_index.shape[0]} rows for a batch of "
                             f"{source.shape[0]} trees")
        columns = torch.arange(accept_index.shape[1], device=accept_index.device)
        accepted = (columns >= 1) & (columns < accept_lens.to(columns.device)[:, None])
        flags = source.reshape(-1)[accept_index.long()]
        grafted = (accepted & (flags & int(NodeSource.RETRIEVED) != 0)
                   & (flags & int(NodeSource.DRAFT) == 0))
        self._counts += torch.stack([accepted.sum(), grafted.sum()]).to(self._counts.device)
        self.steps += 1

    def totals(self) -> tuple[int, int]:
        """(accepted draft tokens, accepted grafted tokens) so far; one host read."""
        accepted, grafted = self._counts.tolist()
        return accepted - grafted, grafted
