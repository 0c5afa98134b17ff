"""Tensor-parallel consistency with real torch.distributed (gloo, 2 and 4 processes): every rank
builds the same Graft tree at every step and holds the same retrieval state, while requests
join and leave; the broadcast switch repairs a rank whose inputs diverged."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from graft_sglang.plugin.tp import broadcast_tree, trees_agree
from graft_sglang.proposer import GraftProposer, RetrievalPlan
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.tree.builder import GraftConfig
from tests.random_inputs import eagle_draft

VOCAB, STEPS, BUDGET = 40, 60, 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(rank: int, world: int, port: int, diverge: bool) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    # The scheduler's view is identical on every rank: same seed, same event stream.
    events = torch.Generator().manual_seed(1234)
    text = torch.randint(0, VOCAB, (4000,), generator=events).tolist()
    retriever = SuffixRetriever()
    proposer = GraftProposer(GraftConfig(budget=BUDGET, threshold=0.05, vocab_size=VOCAB),
                             retriever, RetrievalPlan(root_nodes=8, draft_anchors=1,
                                                      anchor_nodes=4))
    live: dict[str, list[int]] = {}
    next_rid = 0
    for step in range(STEPS):
        if not live or float(torch.rand(1, generator=events)) < 0.3:  # a request joins
            start = int(torch.randint(0, 3900, (1,), generator=events))
            rid = f"r{next_rid}"
            next_rid += 1
            live[rid] = text[start : start + 40]
            proposer.start(rid, live[rid])
        if len(live) > 1 and float(torch.rand(1, generator=events)) < 0.2:  # one leaves
            rid = sorted(live)[int(torch.randint(0, len(live), (1,), generator=events))]
            proposer.finish(rid)
            del live[rid]
        rids = sorted(live)
        # Gathered draft logits are identical across ranks; `diverge` simulates a rank whose
        # draft differs (e.g. a bug), which the broadcast switch must repair.
        seed = step * 7919 + (rank if diverge else 0)
        draft = eagle_draft(torch.Generator().manual_seed(seed), len(rids), 3, 3, VOCAB)
        roots = torch.tensor([live[r][-1] for r in rids])
        seq_lens = torch.tensor([len(live[r]) - 1 for r in rids])
        tree = proposer.build(rids, roots, seq_lens, draft)
        if diverge:
            tree = broadcast_tree(tree, lambda t: dist.broadcast(t, src=0))
        assert trees_agree(tree), f"rank {rank} step {step}: trees differ"
        for b, rid in enumerate(rids):  # commit a deterministic pseudo-accepted path
            path = [int(tree.tokens[b, i]) for i in (1, 2) if tree.parents[b, i] == i - 1]
            accepted = [*path, int(torch.randint(0, VOCAB, (1,), generator=events))]
            live[rid].extend(accepted)
            proposer.commit(rid, accepted)
    # Retrieval state: identical proposals for every live request and the same shared corpus.
    state = torch.tensor([len(retriever.shared)] + [
        t for rid in sorted(live) for t in retriever.propose(rid, (), 16).tokens])
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([state.numel()]))
    assert len({int(s) for s in sizes}) == 1
    states = [torch.empty_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    assert all(torch.equal(s, states[0]) for s in states)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_build_identical_trees(world: int) -> None:
    mp.spawn(_serve, args=(world, _free_port(), False), nprocs=world, join=True)


@pytest.mark.slow
def test_broadcast_repairs_divergent_ranks() -> None:
    mp.spawn(_serve, args=(2, _free_port(), True), nprocs=2, join=True)


def _diverged_without_broadcast(rank: int, world: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    draft = eagle_draft(torch.Generator().manual_seed(rank), 1, 3, 3, VOCAB)
    proposer = GraftProposer(GraftConfig(budget=BUDGET, threshold=None), None, RetrievalPlan())
    tree = proposer.build(["x"], torch.tensor([1]), torch.tensor([5]), draft)
    assert not trees_agree(tree)  # the check itself detects divergence
    dist.destroy_process_group()


@pytest.mark.slow
def test_agreement_check_detects_divergence() -> None:
    mp.spawn(_diverged_without_broadcast, args=(2, _free_port()), nprocs=2, join=True)
