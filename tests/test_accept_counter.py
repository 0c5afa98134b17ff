"""``AcceptCounter``: the device-side per-source counts equal the host loop over
``count_grafted`` that the synchronous worker ran per step."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.plugin.accept_counter import AcceptCounter
from graft_sglang.tree.builder import NodeSource, count_grafted

FLAGS = [NodeSource.ROOT, NodeSource.DRAFT, NodeSource.RETRIEVED,
         NodeSource.DRAFT | NodeSource.RETRIEVED, NodeSource.FILLER]


def host_counts(source: torch.Tensor, accept_index: torch.Tensor,
                accept_lens: torch.Tensor) -> tuple[int, int]:
    """The synchronous worker's accounting (``GraftState.account``'s loop)."""
    flat = source.reshape(-1).tolist()
    draft = grafted = 0
    for b in range(accept_index.shape[0]):
        nodes = accept_index[b, 1 : int(accept_lens[b])].tolist()
        g = count_grafted(flat, nodes)
        grafted += g
        draft += len(nodes) - g
    return draft, grafted


def random_step(gen: torch.Generator, bs: int, n: int, width: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """source [bs, n] flags; accept_index [bs, width] distinct flat node ids of each
    request's tree (root first), -1 past accept_lens [bs] (1..width)."""
    picks = torch.randint(len(FLAGS), (bs, n), generator=gen)
    source = torch.tensor([int(f) for f in FLAGS])[picks]
    lens = torch.randint(1, width + 1, (bs,), generator=gen)
    index = torch.full((bs, width), -1, dtype=torch.int32)
    for b in range(bs):
        nodes = torch.cat([torch.zeros(1, dtype=torch.long),
                           1 + torch.randperm(n - 1, generator=gen)[: width - 1]])
        index[b, : int(lens[b])] = (b * n + nodes[: int(lens[b])]).int()
    return source, index, lens.int()


@pytest.mark.parametrize("seed", range(3))
def test_device_counts_equal_the_host_loop(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    counter = AcceptCounter()
    expected = [0, 0]
    for _ in range(20):
        bs = int(torch.randint(1, 6, (1,), generator=gen))
        step = random_step(gen, bs, n=12, width=7)
        counter.add(*step)
        draft, grafted = host_counts(*step)
        expected = [expected[0] + draft, expected[1] + grafted]
    assert list(counter.totals()) == expected
    assert counter.steps == 20
    assert expected[1] > 0 and expected[0] > 0  # both sources were exercised


def test_rows_must_match_the_trees() -> None:
    source, index, lens = random_step(torch.Generator().manual_seed(0), 3, n=8, width=4)
    with pytest.raises(ValueError, match="rows for a batch of 2"):
        AcceptCounter().add(source[:2], index, lens)
