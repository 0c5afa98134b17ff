"""Tensor-parallel consistency with real ``torch.distributed`` (gloo, 2 and 4 processes).

Each rank runs the Graft state a TP rank of the SGLang worker runs (step, suffix retriever,
radix feed; in graft-paper mode the stage split and the successor table too) on the inputs every
rank sees alike (request arrivals, draft candidates, accepted tokens, cache inserts / evictions,
verify logits), and the ranks compare their trees and retrieval state after every step. The
broadcast switch is checked on trees that differ per rank.

The ranks also agree, over SGLang's own ``GroupCoordinator``, on their settings (given
different environments and calibrations they refuse to start) and on every decision that
changes how many draft forwards run (each a collective): SGLang's real draft loop runs on
every rank with a draft model that all-reduces in every pass.
"""

from __future__ import annotations

import functools
import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("sglang")

from graft_sglang.calibration import Calibration
from graft_sglang.plugin.radix_feed import RadixFeed
from graft_sglang.plugin.settings import GraftSettings, server_settings
from graft_sglang.plugin.tp import agree_settings, broadcast_tree, trees_agree
from graft_sglang.plugin.verify_input import step_tree
from graft_sglang.plugin.worker import GraftState, all_candidates
from graft_sglang.retrieval.successor import SuccessorTable
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.layout import tree_layout
from tests.random_inputs import eagle_draft, eagle_loop_lists

BUDGET, TOPK, DEPTH, VOCAB, STEPS = 16, 3, 3, 12, 40


def _all_equal(value: torch.Tensor) -> bool:
    gathered = [torch.empty_like(value) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, value)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def _retrieval_fingerprint(retriever: SuffixRetriever, rids: list[str]) -> torch.Tensor:
    """A digest of what the retriever would propose for every live request (its observable
    state) and of the live request set."""
    digest = hashlib.sha256(repr(sorted(retriever.live_requests)).encode())
    for rid in rids:
        c = retriever.propose(rid, (), BUDGET)
        digest.update(repr((rid, c.tokens, c.parents, [round(p, 6) for p in c.probs])).encode())
    return torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)


def _accepted_path(tree: GraftTree, b: int, length: int) -> list[int]:
    """Tokens of the deepest node's root path, cut to ``length`` (a stand-in verify outcome that
    every rank computes alike)."""
    node, path = int(tree.layout.depth[b].argmax()), []
    while node > 0:
        path.append(int(tree.tokens[b, node]))
        node = int(tree.parents[b, node])
    return path[::-1][:length] or [int(tree.tokens[b, 0])]


def _deterministic_build(rank: int) -> None:
    settings = GraftSettings()
    retriever = SuffixRetriever(settings.suffix_config())
    graft = GraftStep(settings.recipe(BUDGET), retriever, check_inputs=False)
    feed = RadixFeed(retriever, max_documents=6)
    gen = torch.Generator().manual_seed(1234)  # the inputs all ranks share
    live: dict[str, list[int]] = {}
    for step in range(STEPS):
        if step % 3 == 0 or not live:  # a request joins
            rid = f"r{step}"
            live[rid] = torch.randint(0, VOCAB, (8,), generator=gen).tolist()
            graft.start(rid, live[rid])
        if step % 7 == 6 and len(live) > 1:  # a request leaves; the cache keeps its text
            rid = next(iter(live))
            feed.on_insert(tuple(live.pop(rid)))
            graft.finish(rid)
        if step % 11 == 10:
            feed.on_evict(cache_tokens=20)
        rids = sorted(live)
        draft = eagle_draft(gen, len(rids), TOPK, DEPTH, VOCAB)
        roots = torch.tensor([live[r][-1] for r in rids])
        seq_lens = torch.tensor([len(live[r]) for r in rids])
        tree, _ = graft.build(rids, roots, seq_lens, draft)
        assert trees_agree(tree), f"rank {rank}: trees differ at step {step}"
        for b, rid in enumerate(rids):
            length = int(torch.randint(1, DEPTH + 2, (1,), generator=gen))
            accepted = _accepted_path(tree, b, length)
            live[rid] += accepted
            graft.commit(rid, accepted)
        assert _all_equal(_retrieval_fingerprint(retriever, rids)), \
            f"rank {rank}: retrieval state differs at step {step}"
    # the check can fail: a rank-dependent corpus gives different retrieval state
    feed.on_insert(tuple(range(rank, rank + 5)))
    retriever.start_request("probe", [rank])
    differs = not _all_equal(_retrieval_fingerprint(retriever, ["probe"]))
    assert differs, "the fingerprint did not see a rank-dependent corpus"


def _paper_build(rank: int) -> None:
    """graft-paper: per-request stages from the draft scores, the successor table fed with the
    verify logits (which SGLang all-gathers over the vocabulary, so every rank has them all),
    suffix retrieval beside it: identical trees and tables on every rank."""
    settings = GraftSettings(mode="graft-paper", retrieval="both", stage_levels=(0, 1),
                             stage_thresholds=(0.5, 0.3))
    state = GraftState(settings, BUDGET, VOCAB)
    graft, table = state.step, state.step.successor
    gen = torch.Generator().manual_seed(99)  # the inputs all ranks share
    live = {f"r{i}": torch.randint(0, VOCAB, (6,), generator=gen).tolist() for i in range(3)}
    for rid, prompt in live.items():
        graft.start(rid, prompt)
    for step in range(STEPS):
        rids = sorted(live)
        levels = int(torch.randint(1, DEPTH + 1, (1,), generator=gen))
        lists = eagle_loop_lists(gen, len(rids), TOPK, levels, VOCAB)
        roots = torch.tensor([live[r][-1] for r in rids])
        seq_lens = torch.tensor([len(live[r]) for r in rids])
        tree, _ = step_tree(graft, rids, roots, seq_lens, *all_candidates(*lists, BUDGET),
                            TOPK)
        assert trees_agree(tree), f"rank {rank}: trees differ at step {step}"
        logits = torch.randn(len(rids) * BUDGET, VOCAB, generator=gen)
        graft.observe_verified(tree.tokens.reshape(-1), logits)
        assert _all_equal(table.ids) and _all_equal(table.probs), \
            f"rank {rank}: successor tables differ at step {step}"
        for b, rid in enumerate(rids):
            accepted = _accepted_path(tree, b, int(torch.randint(1, DEPTH + 2, (1,),
                                                                 generator=gen)))
            live[rid] += accepted
            graft.commit(rid, accepted)
    # the check can fail: rank-dependent logits give different tables
    graft.observe_verified(torch.tensor([rank % VOCAB]), torch.randn(1, VOCAB) + rank)
    assert not (_all_equal(table.ids) and _all_equal(table.probs))


def _broadcast(rank: int) -> None:
    gen = torch.Generator().manual_seed(rank)  # every rank drafts something else
    graft = GraftStep(GraftSettings(retrieval="successor").recipe(BUDGET),
                         successor=SuccessorTable(VOCAB), check_inputs=False)
    draft = eagle_draft(gen, 2, TOPK, DEPTH, VOCAB)
    seq_lens = torch.tensor([5, 11])
    tree, _ = graft.build(["a", "b"], torch.tensor([1, 2]), seq_lens, draft)
    assert not trees_agree(tree)
    shared = broadcast_tree(tree, lambda t: dist.broadcast(t, src=0))
    assert trees_agree(shared)
    if rank == 0:
        assert torch.equal(shared.tokens, tree.tokens)
        assert torch.equal(shared.scores, tree.scores)
    layout = tree_layout(shared.parents, seq_lens)
    assert torch.equal(shared.layout.retrieve_next_sibling, layout.retrieve_next_sibling)
    assert torch.equal(shared.layout.positions, layout.positions)


def _run(rank: int, world: int, init: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _deterministic_build(rank)
        _paper_build(rank)
        _broadcast(rank)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 4])
def test_identical_trees_and_retrieval_state_on_all_ranks(world: int, tmp_path: Path) -> None:
    """Deterministic build over many steps, then the broadcast switch (one spawn per size)."""
    mp.spawn(_run, args=(world, f"file://{tmp_path}/rendezvous"), nprocs=world)


def _tp_group(rank: int, world: int):
    """SGLang's TP ``GroupCoordinator`` over gloo (what ``get_parallel().tp_group`` is)."""
    from sglang.srt.distributed.parallel_state import GroupCoordinator

    return GroupCoordinator(group_ranks=[list(range(world))], local_rank=rank,
                            torch_distributed_backend="gloo", use_pynccl=False,
                            use_mscclpp=False, use_custom_allreduce=False,
                            use_torch_symm_mem_all_reduce=False, use_hpu_communicator=False,
                            use_xpu_communicator=False, group_name="graft_test_tp")


def _settings_agreement(rank: int, group, heads: Path) -> None:
    """Each rank reads its own environment and head directory, as the worker does."""
    head = heads / f"rank{rank}"
    head.mkdir()
    os.environ["SGLANG_GRAFT_THRESHOLD"] = "0.2"
    server_settings.cache_clear()
    agree_settings(server_settings(str(head)), group)  # the same everywhere: starts
    os.environ["SGLANG_GRAFT_THRESHOLD"] = "0.2" if rank == 0 else "0.3"
    server_settings.cache_clear()
    with pytest.raises(ValueError, match=r"SGLANG_GRAFT_THRESHOLD: 0\.2 != 0\.3"):
        agree_settings(server_settings(str(head)), group)
    del os.environ["SGLANG_GRAFT_THRESHOLD"]
    Calibration(stage_thresholds=(0.3, 0.2, 0.1) if rank else (0.35, 0.25, 0.15)).save(head)
    server_settings.cache_clear()
    with pytest.raises(ValueError, match=r"SGLANG_GRAFT_STAGE_THRESHOLDS.*calibration\.json"):
        agree_settings(server_settings(str(head)), group)
    server_settings.cache_clear()


def _stop_decisions(rank: int, group) -> None:
    """SGLang's ``draft_forward`` on every rank, its draft model all-reducing in every pass:
    a rank that ran fewer passes would leave the others waiting (the gloo timeout fails it)."""
    from tests.test_plugin_checkpoints import (
        StandInDraftModel,
        draft_worker,
        forward_batch,
        root_topk,
    )

    class CollectiveDraftModel(StandInDraftModel):
        def forward(self, batch):
            out = super().forward(batch)
            dist.all_reduce(out.logits_output.hidden_states)  # like a TP layer's reduction
            return out

    topk, steps, n = 4, 4, 16

    def worker(settings: GraftSettings, broadcast=None):
        w = draft_worker(settings, topk, steps, n)
        w.draft_runner = CollectiveDraftModel()
        w.graft = GraftState(settings, n, w.graft.vocab_size, broadcast=broadcast)
        return w

    # Plain TP: the loop's inputs are the same on every rank (here: the same seeds), so each
    # level's decision is too, whether it stops at level 0, deeper, or never.
    topk_p, topk_index = root_topk(3, topk)
    passes = []
    for threshold in (float(topk_p.max()) + 1e-3, float(topk_p.max()) / 4, 1e-6):
        w = worker(GraftSettings(threshold=threshold))
        w.draft_forward(forward_batch(topk_p, topk_index, steps))
        assert _all_equal(torch.tensor([w.draft_runner.calls]))
        passes.append(w.draft_runner.calls)
    assert passes[0] == 0 and passes[-1] == steps - 1
    # Ranks that draft differently (what the broadcast switch is for): rank 0 alone would stop
    # at level 0, the others would draft on; alone, each rank decides for itself...
    threshold = float(topk_p.max()) / 2
    mine = topk_p * (0.1 if rank == 0 else 1.0)
    alone = worker(GraftSettings(threshold=threshold))
    stops = torch.tensor([alone.graft.stops_at_root(forward_batch(mine, topk_index, steps)
                                                    .spec_info)])
    gathered = [torch.empty_like(stops) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, stops)
    assert [bool(g) for g in gathered] == [True] + [False] * (len(gathered) - 1)
    # ...with the switch, every rank takes rank 0's decisions: the same passes everywhere.
    for scale in ((0.1, 1.0), (1.0, 0.1)):  # rank 0 stops at once / rank 0 drafts on
        mine = topk_p * (scale[0] if rank == 0 else scale[1])
        shared = worker(GraftSettings(threshold=threshold, tp_broadcast=True),
                        functools.partial(group.broadcast, src=0))
        batch = forward_batch(mine, topk_index, steps)
        assert shared.graft.stops_at_root(batch.spec_info) == (scale[0] < 1)
        shared.draft_forward(batch)
        assert _all_equal(torch.tensor([shared.draft_runner.calls]))
        assert (shared.draft_runner.calls == 0) == (scale[0] < 1)


def _run_agreement(rank: int, world: int, init: str, heads: str) -> None:
    from tests.test_plugin_checkpoints import publish_graft_context

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        group = _tp_group(rank, world)
        _settings_agreement(rank, group, Path(heads))
        (Path(heads) / f"context{rank}").mkdir()
        publish_graft_context(Path(heads) / f"context{rank}")
        with torch._dynamo.config.patch(disable=True):
            _stop_decisions(rank, group)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_settings_and_draft_passes(tmp_path: Path) -> None:
    """Differing per-rank settings are refused at start-up; every rank runs the same draft
    passes: plain TP from identical inputs, the broadcast switch from rank 0's decisions."""
    mp.spawn(_run_agreement, args=(2, f"file://{tmp_path}/rendezvous", str(tmp_path)),
             nprocs=2)
