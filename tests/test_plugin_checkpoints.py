"""graft-paper in the SGLang worker, on CPU: stop-drafting checkpoints inside SGLang 0.5.23's own
``EagleDraftWorker.draft_forward`` loop (the real loop, its real ``select_top_k_tokens``; only the
draft model is a small stand-in that counts its forward passes), the per-request stage split,
and the device-side successor table (no host reads), then the worker's step pieces decoding
losslessly against greedy decoding."""

from __future__ import annotations

import json
import types
from array import array
from pathlib import Path

import pytest
import torch

sglang = pytest.importorskip("sglang")

from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402
from sglang.srt.server_args import prepare_server_args  # noqa: E402
from sglang.srt.speculative.eagle_info import EagleDraftInput  # noqa: E402

from graft_sglang.plugin.settings import GraftSettings  # noqa: E402
from graft_sglang.plugin.verify_input import build_graft_verify_input, step_tree  # noqa: E402
from graft_sglang.plugin.worker import GraftDraftWorker, GraftState, all_candidates  # noqa: E402
from graft_sglang.stages import StagePolicy  # noqa: E402
from graft_sglang.tree.builder import NodeSource  # noqa: E402
from graft_sglang.tree.layout import TreeMaskMode, tree_mask  # noqa: E402
from tests.host_reads import HostReads, OnDevice, on_device  # noqa: E402
from tests.random_inputs import eagle_loop_lists  # noqa: E402

torch.set_num_threads(1)
load_plugins()
VOCAB, HIDDEN = 50, 16


def publish_graft_context(directory: Path) -> tuple:
    """Publish SGLang's process context as a GRAFT server does (the draft loop reads
    ``get_spec()``), for a tiny EAGLE-3 head config written to ``directory``; returns what it
    replaced."""
    from tests.test_plugin import TINY_EAGLE3_CONFIG

    (directory / "config.json").write_text(json.dumps(TINY_EAGLE3_CONFIG))
    args = prepare_server_args(["--model-path", str(directory), "--speculative-algorithm",
                                "graft", "--speculative-draft-model-path", str(directory),
                                "--device", "cpu"])
    args.resolve_once()
    context = get_context()
    saved = (context._server_args, context._config_bags, context.parallel._config)
    context.set_server_args(args)
    return saved


@pytest.fixture
def sglang_context(tmp_path: Path):
    """SGLang's GRAFT process context (``publish_graft_context``), restored afterwards. Dynamo
    is off: ``select_top_k_tokens`` is ``torch.compile``d, which would only cost compile time
    here."""
    saved = publish_graft_context(tmp_path)
    context = get_context()
    try:
        with torch._dynamo.config.patch(disable=True):
            yield
    finally:
        context._server_args, context._config_bags, context.parallel._config = saved


class StandInDraftModel:
    """The draft model runner's interface (``forward(forward_batch).logits_output``): logits
    from the fed token and hidden state; counts its forward passes."""

    def __init__(self, seed: int = 0, sharpness: float = 2.0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(VOCAB, HIDDEN, generator=gen)
        self.out = torch.randn(HIDDEN, VOCAB, generator=gen) * sharpness
        self.calls = 0
        self.model_config = types.SimpleNamespace(
            hf_config=types.SimpleNamespace(architectures=["LlamaForCausalLMEagle3"]),
            model_is_mrope=False)
        self.canary_manager = None

    def forward(self, forward_batch: ForwardBatch) -> types.SimpleNamespace:
        self.calls += 1
        h = torch.tanh(forward_batch.spec_info.hidden_states
                       + self.embed[forward_batch.input_ids])
        return types.SimpleNamespace(logits_output=types.SimpleNamespace(
            next_token_logits=h @ self.out, hidden_states=h))


def draft_worker(settings: GraftSettings, topk: int = 4, steps: int = 4,
                 n: int = 16) -> GraftDraftWorker:
    """A GraftDraftWorker with the attributes SGLang's ``draft_forward`` reads (the rest of
    ``__init__`` loads models and captures graphs)."""
    worker = object.__new__(GraftDraftWorker)
    worker.topk, worker.speculative_num_steps, worker.speculative_num_draft_tokens = (
        topk, steps, n)
    worker.hot_token_id = None
    worker.draft_runner = StandInDraftModel()
    worker.draft_attn_backend = types.SimpleNamespace(attn_backends=[None] * steps)
    worker.index_share_for_mtp_iteration = worker.seed_dsa_topk_from_draft_extend = False
    worker.graft = GraftState(settings, n, VOCAB)
    return worker


def forward_batch(topk_p: torch.Tensor, topk_index: torch.Tensor, steps: int) -> ForwardBatch:
    """SGLang's draft-decode ForwardBatch as ``prepare_for_draft`` leaves it."""
    bs, topk = topk_p.shape
    gen = torch.Generator().manual_seed(3)
    batch = ForwardBatch(forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=None,
                         req_pool_indices=torch.arange(bs), seq_lens=torch.full((bs,), 10),
                         out_cache_loc=torch.arange(bs * topk * steps), seq_lens_sum=10 * bs)
    batch.spec_info = EagleDraftInput(topk_p=topk_p, topk_index=topk_index,
                                      hidden_states=torch.randn(bs, HIDDEN, generator=gen))
    batch.positions = torch.full((bs * topk,), 10)
    return batch


def root_topk(bs: int, topk: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(bs, VOCAB, generator=gen) * 3, -1).topk(topk, dim=-1)


def paper(thresholds: tuple[float, ...], levels: tuple[int, ...] = (0, 1, 2)) -> GraftSettings:
    return GraftSettings(mode="graft-paper", retrieval="successor", stage_levels=levels,
                         stage_thresholds=thresholds)


@pytest.mark.parametrize(("thresholds", "levels_drafted"), [
    ((1.0, 1.0, 1.0), 1),  # every request stops at the root's children: no draft pass
    ((1e-9, 1.0, 1.0), 2),  # after level 1: one pass
    ((1e-9, 1e-9, 1.0), 3),  # after level 2: two passes
    ((1e-9, 1e-9, 1e-9), 4),  # no checkpoint fires: the whole loop (steps - 1 passes)
])
def test_checkpoints_skip_draft_passes(sglang_context, thresholds: tuple[float, ...],
                                       levels_drafted: int) -> None:
    topk, steps = 4, 4
    full = draft_worker(GraftSettings(threshold=None), topk, steps)  # no checks: SGLang's loop
    want = full.draft_forward(forward_batch(*root_topk(3, topk), steps))
    assert full.draft_runner.calls == steps - 1
    worker = draft_worker(paper(thresholds), topk, steps)
    batch = forward_batch(*root_topk(3, topk), steps)
    parent_list, scores, tokens, probs = worker.draft_forward(batch)
    assert worker.draft_runner.calls == levels_drafted - 1
    m = topk + (levels_drafted - 1) * topk * topk
    assert scores.shape == tokens.shape == (3, m) and probs is None
    assert parent_list.shape == (3, 0 if levels_drafted == 1 else 1 + (levels_drafted - 1) * topk)
    # the levels drafted are exactly the full loop's first levels
    torch.testing.assert_close(scores, want[1][:, :m])
    assert torch.equal(tokens, want[2][:, :m])
    assert torch.equal(parent_list, want[0][:, :parent_list.shape[1]])
    assert worker.graft.stops == ({} if levels_drafted == steps else {levels_drafted - 1: 1})
    assert worker.graft.stops_at_root(batch.spec_info) == (levels_drafted == 1)


def test_a_confident_request_keeps_the_batch_drafting(sglang_context) -> None:
    """Passes are saved only when every request stopped; the others still get their own
    stage's split (per-request quotas recomputed from the scores)."""
    topk, steps = 4, 4
    topk_p, topk_index = root_topk(2, topk)
    topk_p[0] = torch.tensor([0.97, 0.01, 0.01, 0.01])  # request 0 is confident at level 0
    topk_p[1] = torch.tensor([0.2, 0.2, 0.2, 0.2])
    settings = paper((0.5, 1e-9, 1e-9))
    worker = draft_worker(settings, topk, steps)
    batch = forward_batch(topk_p, topk_index, steps)
    assert not worker.graft.stops_at_root(batch.spec_info)
    parent_list, scores, tokens, _ = worker.draft_forward(batch)
    assert worker.draft_runner.calls == steps - 1 and worker.graft.stops == {}
    policy = settings.stage_policy()
    stages = policy.stages_from_scores(scores, topk)
    assert stages.tolist() == [-1, 0]
    quotas = policy.draft_quotas(stages, 16).tolist()
    assert quotas == [15, policy.draft_quota(0, 16)] and quotas[1] < quotas[0]
    # a successor table with every row filled, so retrieval can take the freed slots
    gen = torch.Generator().manual_seed(5)
    worker.graft.step.observe_verified(torch.arange(VOCAB),
                                       torch.randn(VOCAB, VOCAB, generator=gen))
    tree, _ = step_tree(worker.graft.step, ["a", "b"], torch.tensor([1, 2]),
                        torch.tensor([10, 10]), parent_list, scores, tokens, topk)
    draft_nodes = ((tree.source & NodeSource.DRAFT) > 0).sum(dim=1).tolist()
    assert draft_nodes[1] == quotas[1] < draft_nodes[0]


def test_graft_mode_stops_when_everything_deeper_is_pruned(sglang_context) -> None:
    topk, steps = 4, 4
    topk_p, topk_index = root_topk(2, topk)
    low = draft_worker(GraftSettings(threshold=float(topk_p.max()) + 1e-3), topk, steps)
    low.draft_forward(forward_batch(topk_p, topk_index, steps))
    assert low.draft_runner.calls == 0 and low.graft.stops == {0: 1}
    high = draft_worker(GraftSettings(threshold=1e-6), topk, steps)
    high.draft_forward(forward_batch(topk_p, topk_index, steps))
    assert high.draft_runner.calls == steps - 1


def test_on_device_sees_every_way_to_the_host() -> None:
    """The counters can fail: each host read of an ``OnDevice`` tensor is seen."""
    t = on_device(torch.arange(6).view(2, 3))
    OnDevice.to_host.clear()
    with HostReads() as host:
        (t + 1).sum(dim=1).tolist()
        t.max(dim=1).values.cpu()
        t.to("cpu", torch.int32)
        bool((t > 2).any())
        assert type(t.to(torch.int32)) is OnDevice  # a dtype change stays on the device
    assert OnDevice.to_host == ["tolist", "cpu", "to", "__bool__"]
    assert len(host.reads) == 1  # bool(): a scalar read


VERIFY_MODES = [TreeMaskMode.QLEN_ONLY, TreeMaskMode.QLEN_ONLY_BITPACKING, TreeMaskMode.FULL_MASK]


@pytest.mark.parametrize("mode", VERIFY_MODES, ids=[m.name for m in VERIFY_MODES])
@pytest.mark.parametrize("settings", [
    GraftSettings(threshold=0.05),  # suffix retrieval below the root and one anchor
    GraftSettings(mode="graft-paper", retrieval="both", stage_levels=(0, 1, 2),
                  stage_thresholds=(0.5, 0.2, 0.1)),  # stage split, suffix and successor
], ids=["graft", "graft-paper-both"])
def test_verify_input_build_stays_on_the_device(settings: GraftSettings,
                                                mode: TreeMaskMode) -> None:
    """The whole ``build_graft_verify_input`` of a server step at bs 64, N 32 (draft loop
    output, anchors, retrieval, tree, mask written into the backend's buffer) with every
    input on the "device": no scalar read, at most one device-to-host copy (the anchors and
    draft paths retrieval needs, only when the plan has anchors); then the accounting after
    verify reads nothing either."""
    from sglang.srt.layers.attention.verify_mask import VerifyMask
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    bs, n, topk, steps, context = 64, 32, 4, 4, 256
    gen = torch.Generator().manual_seed(4)
    state = GraftState(settings, n, VOCAB)
    prompts = torch.randint(0, VOCAB, (bs, 40), generator=gen).tolist()
    reqs = [Req(f"r{b}", "", array("q", p), SamplingParams()) for b, p in enumerate(prompts)]
    rids = state.sync(reqs)
    state.step.observe_verified(torch.arange(VOCAB), torch.randn(VOCAB, VOCAB, generator=gen))
    lists = eagle_loop_lists(gen, bs, topk, steps, VOCAB)
    seq_lens = torch.randint(40, 120, (bs,), generator=gen)
    per_request = n * (context + n) if mode == TreeMaskMode.FULL_MASK else n * n
    buffer = on_device(torch.zeros(bs * per_request, dtype=torch.bool))
    backend = types.SimpleNamespace(model_runner=types.SimpleNamespace(
        attn_backend=types.SimpleNamespace(verify_mask=VerifyMask(buffer, mode, bs))))
    batch = types.SimpleNamespace(forward_mode=ForwardMode.DECODE, seq_lens=on_device(seq_lens),
                                  seq_lens_sum=None)
    draft_input = types.SimpleNamespace(
        bonus_tokens=on_device(torch.randint(0, VOCAB, (bs,), generator=gen)))
    candidates = [on_device(t) for t in all_candidates(*lists, n)]
    OnDevice.to_host.clear()
    with HostReads() as host:
        vi = build_graft_verify_input(
            batch, draft_input, *candidates, None, target_worker=backend, topk=topk,
            num_steps=steps, num_draft_tokens=n, tree_mask_mode=mode, device="cpu",
            step=state.step, rids=rids)
    assert host.reads == []
    copies = 1 if state.retriever is not None and state.recipe.plan.draft_anchors else 0
    assert OnDevice.to_host == ["cpu"] * copies
    assert vi.custom_mask is buffer
    want = tree_mask(vi.tree.layout.ancestors.as_subclass(torch.Tensor), seq_lens, mode)
    assert torch.equal(buffer.as_subclass(torch.Tensor).view(torch.uint8)[: want.numel()],
                       want.view(torch.uint8))
    assert bool((vi.tree.source & NodeSource.RETRIEVED > 0).any())  # retrieval took part
    # the accounting after verify: device counters only
    state.last_input = vi
    accept_index = on_device(torch.arange(bs * n).view(bs, n)[:, :3])
    with HostReads() as host:
        state.account(accept_index, on_device(torch.full((bs,), 3)))
    assert host.reads == [] and OnDevice.to_host == ["cpu"] * copies
    assert state.steps == 1 and state.accepted_draft + state.accepted_grafted == 2 * bs


def test_successor_update_and_walk_read_nothing_on_the_host() -> None:
    """The per-step successor path of the worker (update from the verify logits, walk from the
    roots) runs without a host read, so on a GPU it adds no round trip."""
    settings = paper((0.35, 0.25, 0.15), levels=(0, 1, 5))
    state = GraftState(settings, 16, VOCAB)
    gen = torch.Generator().manual_seed(0)
    verify_tokens = torch.randint(0, VOCAB, (3 * 16,), generator=gen)
    logits = torch.randn(3 * 16, VOCAB + 14, generator=gen)  # a padded LM head
    verify_input = types.SimpleNamespace(draft_token=verify_tokens)
    with HostReads() as host:
        state.observe(verify_input, types.SimpleNamespace(next_token_logits=logits))
        walk = state.step.successor.propose(verify_tokens[:3], num_draft=20, check=False)
    assert host.reads == []
    want = torch.softmax(logits[:, :VOCAB], -1).topk(10, dim=-1).indices
    last = {int(t): i for i, t in enumerate(verify_tokens.tolist())}  # later entries win
    for token, i in last.items():
        row = state.step.successor.ids[token]
        assert row.tolist() == want[i].tolist()
    assert bool(walk.valid.any())
    # rows past the tree's (graph padding at the end) are ignored; too few rows are refused
    padded = torch.cat([logits, torch.randn(5, VOCAB + 14, generator=gen)])
    before = state.step.successor.ids.clone()
    state.observe(verify_input, types.SimpleNamespace(next_token_logits=padded))
    assert torch.equal(state.step.successor.ids, before)
    state.observe(verify_input, types.SimpleNamespace(next_token_logits=logits[:7]))
    assert torch.equal(state.step.successor.ids, before)
    # the checked entry point does read values (and refuses bad ones)
    with pytest.raises(ValueError, match="tokens"):
        state.step.successor.update_from_logits(torch.tensor([VOCAB]), logits[:1])


def test_prefill_seeds_the_successor_table() -> None:
    """A prefill's logits (one row per request, after its last prompt token) seed that token's
    row; an extend batch's tokens are the requests' prompts back to back."""
    state = GraftState(paper((0.35, 0.25, 0.15), levels=(0, 1, 5)), 16, VOCAB)
    input_ids = torch.tensor([3, 4, 5, 7, 8])  # requests of 3 and 2 tokens
    logits = torch.full((2, VOCAB), -5.0)
    logits[0, 11], logits[1, 12] = 5.0, 5.0
    state.observe_prefill(input_ids, [3, 2], types.SimpleNamespace(next_token_logits=logits))
    table = state.step.successor
    assert int(table.ids[5, 0]) == 11 and int(table.ids[8, 0]) == 12
    assert bool((table.ids[[3, 4, 7]] == -1).all())  # no logits there, rows left empty


@pytest.mark.parametrize("retrieval", ["successor", "both"])
def test_paper_step_loop_is_lossless_against_greedy_decoding(retrieval: str) -> None:
    """The worker's graft-paper step (draft loops that stopped at random levels -> per-request
    stage split -> successor and suffix candidates -> tree -> verify input), verified greedily
    with SGLang's kernel semantics, the successor table fed with the verify logits, reproduces
    plain greedy decoding of a deterministic target token by token."""
    from tests.plugin_loop import greedy_reference, run_worker_steps

    vocab, topk, steps, n, new_tokens = 12, 3, 3, 16, 60
    gen = torch.Generator().manual_seed(11)
    # A first-order target (next = table[last]): what a successor table can learn exactly.
    table = torch.randint(0, vocab, (vocab,), generator=gen)

    def next_token(context: list[int]) -> int:
        return int(table[context[-1]])

    prompts = [[1, 2, 3, 4], [5, 6, 5, 6, 7]]
    settings = GraftSettings(mode="graft-paper", retrieval=retrieval, stage_levels=(0, 1),
                             stage_thresholds=(0.5, 0.3))
    state = GraftState(settings, n, vocab)
    assert isinstance(state.recipe.stages, StagePolicy)
    outputs = run_worker_steps(state, next_token, prompts, new_tokens, vocab, topk, steps, gen,
                               vary_levels=True)
    assert outputs == [greedy_reference(next_token, p, new_tokens) for p in prompts]
    assert state.steps < new_tokens // 2  # the successor table learnt the target's table
    assert state.accepted_grafted > 0
