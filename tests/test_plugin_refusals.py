"""GRAFT in real server configurations, on CPU against SGLang 0.5.23's real classes: what a
server must refuse at start-up (attention DP, lossy accept thresholds, backends SGLang picks
itself, an SGLang whose rebound functions changed, an unreadable draft config), what it must
never feed a tree (multimodal pad values), and the draft loop during graph capture (the
multi-rank cases are in ``tests/test_tp.py``)."""

from __future__ import annotations

import json
import logging
import types
from array import array
from pathlib import Path

import pytest
import torch

sglang = pytest.importorskip("sglang")

from sglang.srt.layers.attention.verify_mask import VerifyMask  # noqa: E402
from sglang.srt.managers.schedule_batch import MM_PAD_SHIFT_VALUE, Req  # noqa: E402
from sglang.srt.model_executor.runner import (  # noqa: E402
    DeepEPCudaGraphRunnerAdapter,
    model_capture_mode,
)
from sglang.srt.model_executor.runner_backend.full_cuda_graph_backend import (  # noqa: E402
    FullCudaGraphBackend,
)
from sglang.srt.model_executor.runner_utils.pool import GraphPoolPrecarve  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402
from sglang.srt.speculative import eagle_worker_v2  # noqa: E402
from sglang.srt.speculative.eagle_draft_cuda_graph_runner import (  # noqa: E402
    EAGLEDraftCudaGraphRunner,
    EagleDraftInputBuffers,
)
from sglang.srt.speculative.eagle_utils import TreeMaskMode  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402

from graft_sglang.plugin import registration  # noqa: E402
from graft_sglang.plugin.algo import draft_is_eagle3  # noqa: E402
from graft_sglang.plugin.settings import GraftSettings  # noqa: E402
from graft_sglang.plugin.verify_input import step_tree  # noqa: E402
from graft_sglang.plugin.worker import (  # noqa: E402
    GraftState,
    GraftWorker,
    all_candidates,
    substitution_problems,
)
from graft_sglang.tree.builder import NodeSource  # noqa: E402
from tests import test_plugin, test_plugin_checkpoints  # noqa: E402
from tests.random_inputs import eagle_loop_lists  # noqa: E402
from tests.test_plugin import caches, insert, resolve  # noqa: E402
from tests.test_plugin_checkpoints import HIDDEN, VOCAB, draft_worker, forward_batch  # noqa: E402

torch.set_num_threads(1)
# the fixtures these tests share with the plugin's other tests
draft_dir, fresh_settings = test_plugin.draft_dir, test_plugin.fresh_settings
sglang_context = test_plugin_checkpoints.sglang_context


# -- refused through SGLang's own argument path --------------------------------------------------
@pytest.mark.parametrize("spec, flag", [
    (dict(enable_dp_attention=True), "--enable-dp-attention"),
    (dict(enable_dp_attention=True, dp_size=2, tp_size=2), "--enable-dp-attention"),
    (dict(attn_dp_size=2, tp_size=2), "--attn-dp-size > 1"),
    (dict(speculative_accept_threshold_single=0.5), "--speculative-accept-threshold-single"),
    (dict(speculative_accept_threshold_acc=0.5), "--speculative-accept-threshold-acc"),
])
def test_refused_with_the_flag_named(draft_dir: Path, spec: dict, flag: str) -> None:
    """Attention DP (ranks with different batches would stop drafting at different levels, and
    every draft forward is a collective) and accept thresholds below 1 (lossy target-only
    sampling) are refused; the plain GRAFT arguments still resolve."""
    with pytest.raises(ValueError, match=flag):
        resolve(draft_dir, **spec)
    for plain in ({}, {"tp_size": 2}):
        cfg = resolve(draft_dir, **plain)
        assert cfg.speculative_algorithm == "GRAFT" and cfg.speculative_num_draft_tokens == 32


# -- SGLang's graph capture runs the whole draft loop, its warm-ups included ---------------------
def capture_runner(worker, bs: int) -> EAGLEDraftCudaGraphRunner:
    """SGLang's draft CUDA-graph runner and its full-graph backend around ``worker``, with the
    static buffers ``EAGLEDraftCudaGraphRunner.__init__`` allocates (zeros), on CPU (the
    attention backend, model runner and TP group are stand-ins: no GPU, one rank)."""
    steps, topk = worker.speculative_num_steps, worker.topk
    worker.draft_attn_backend = types.SimpleNamespace(
        attn_backends=[None] * steps, init_forward_metadata_in_graph=lambda batch: None,
        init_forward_metadata_out_graph=lambda batch, in_capture: None)
    runner = object.__new__(EAGLEDraftCudaGraphRunner)
    runner.eagle_worker, runner.draft_attn_backend = worker, worker.draft_attn_backend
    runner.model_runner = types.SimpleNamespace(
        spec_algorithm=SpeculativeAlgorithm.from_string("GRAFT"), is_draft_worker=False,
        model_config=types.SimpleNamespace(vocab_size=VOCAB),
        kv_index_translator=types.SimpleNamespace(bind_runner_slots=lambda batch: None))
    runner.device_module = torch.cpu
    runner.speculative_num_steps, runner.topk, runner.captured_req_width = steps, topk, topk
    runner.require_mlp_tp_gather = runner.require_attn_tp_gather = False
    runner.deepep_adapter = DeepEPCudaGraphRunnerAdapter()
    runner.temperatures, runner.top_ks = torch.ones(bs, 1), torch.full((bs,), 1 << 30)
    runner.extend_seq_lens_cpu = [1] * bs
    n, zeros = bs * topk, torch.zeros
    runner.buffers = EagleDraftInputBuffers(
        input_ids=zeros(n, dtype=torch.int64), req_pool_indices=zeros(bs, dtype=torch.int64),
        out_cache_loc=zeros(n * steps, dtype=torch.int64), positions=zeros(n, dtype=torch.int64),
        mrope_positions=zeros(3, n, dtype=torch.int64), rids_int=None,
        bootstrap_room_ids_int=None, seq_lens=torch.ones(bs, dtype=torch.int64),
        seq_lens_cpu=torch.ones(bs, dtype=torch.int64),
        extend_seq_lens=torch.ones(bs, dtype=torch.int32), topk_p=zeros(bs, topk),
        topk_index=zeros(bs, topk, dtype=torch.int64), draft_probs=None, sampling_seed=None,
        hidden_states=zeros(bs, HIDDEN), global_num_tokens_gpu=None,
        global_num_tokens_for_logprob_gpu=None)
    backend = object.__new__(FullCudaGraphBackend)
    backend._graphs, backend._outputs, backend._pool, backend._capture_stream = {}, {}, None, None
    backend._cuda_graph_runner, backend._device_module = runner, torch.cpu
    backend._tp_group = types.SimpleNamespace(barrier=lambda: None)
    backend._precarve, backend._memory_saver_adapter = GraphPoolPrecarve(), None
    backend._reuse_output_buffer, backend._output_buffer = False, None
    runner.backend = backend
    return runner


@pytest.mark.parametrize("settings", [
    GraftSettings(threshold=0.1),  # graft: zero confidences are below any threshold
    GraftSettings(mode="graft-paper", retrieval="successor", stage_levels=(0, 1),
                  stage_thresholds=(0.3, 0.2)),
])
def test_capture_warmups_run_the_captured_loop(sglang_context, settings: GraftSettings) -> None:
    """``capture_one_shape`` of SGLang's draft graph runner runs ``draft_forward`` on the
    zeroed static buffers in ``model_capture_mode``: the eager warm-ups (no stream capture)
    must draft every level, as the captured graph does, not stop at level 0."""
    topk, steps, bs = 4, 4, 2
    worker = draft_worker(settings, topk, steps)
    runner = capture_runner(worker, bs)
    passes: list[int] = []
    forward = worker.draft_forward

    def counted(batch):
        before = worker.draft_runner.calls
        out = forward(batch)
        passes.append(worker.draft_runner.calls - before)
        return out

    worker.draft_forward = counted
    # CPU has no CUDA graphs: the capture fails once the two warm-ups have run
    with pytest.raises(Exception), model_capture_mode():  # noqa: B017
        runner.capture_one_shape(bs, forward=None)
    assert passes == [steps - 1, steps - 1] and worker.graft.stops == {}
    # the same inputs outside capture mode: the whole batch stops at level 0, no pass
    worker.draft_forward = forward
    worker.draft_forward(forward_batch(torch.zeros(bs, topk),
                                       torch.zeros(bs, topk, dtype=torch.int64), steps))
    assert worker.graft.stops == {0: 1} and passes == [steps - 1, steps - 1]


# -- the resolved attention backend is checked when the worker starts ---------------------------
def started_worker(prefill: str, decode: str, page_size: int = 1,
                   verify_mask: VerifyMask | None = None) -> GraftWorker:
    """A GraftWorker whose target runner resolved ``prefill`` / ``decode`` (the attributes
    ``ModelRunner.init_attention_backends`` sets) and owns ``verify_mask``."""
    worker = object.__new__(GraftWorker)
    runner = types.SimpleNamespace(prefill_attention_backend_str=prefill,
                                   decode_attention_backend_str=decode,
                                   attn_backend=types.SimpleNamespace(verify_mask=verify_mask),
                                   init_attention_backends=lambda: None)
    worker._target_worker = types.SimpleNamespace(model_runner=runner)
    worker._draft_worker = None
    worker.page_size = page_size
    return worker


def test_backend_picked_by_sglang_is_checked_at_worker_start() -> None:
    unread = VerifyMask(buffer=torch.zeros(16, dtype=torch.bool), mode=TreeMaskMode.QLEN_ONLY,
                        max_bs=1, is_read=False)
    for worker, match in [
        (started_worker("trtllm_mha", "trtllm_mha"), "trtllm_mha verifies chains only"),
        (started_worker("fa3", "trtllm_mha"), "trtllm_mha verifies chains only"),
        (started_worker("torch_native", "torch_native", page_size=16), "--page-size > 1"),
        (started_worker("trtllm_mla", "trtllm_mla", verify_mask=unread),
         "does not read the verify tree mask"),
    ]:
        with pytest.raises(ValueError, match=match):
            worker.init_attention_backends()
    read = VerifyMask(buffer=torch.zeros(16, dtype=torch.bool), mode=TreeMaskMode.QLEN_ONLY,
                      max_bs=1)
    started_worker("triton", "triton", page_size=16, verify_mask=read).init_attention_backends()
    started_worker("torch_native", "torch_native").init_attention_backends()


# -- the draft head's config is read locally ------------------------------------------------------
def test_eagle3_detection_reads_no_network(tmp_path: Path, monkeypatch) -> None:
    """A Hugging Face id is read from the local HF cache only (each scheduler rank), even
    online; an id that is not there is a clear error naming SGLANG_GRAFT_EAGLE3."""
    import huggingface_hub.constants as hub_constants
    import huggingface_hub.file_download as hub_download

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)  # as on an online node
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub_download, "get_hf_file_metadata", no_network)
    repo = tmp_path / "models--some-org--head"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLMEagle3"]}))
    assert draft_is_eagle3("some-org/head")
    with pytest.raises(ValueError, match="SGLANG_GRAFT_EAGLE3=1"):
        draft_is_eagle3("some-org/not-downloaded")


# -- an untested SGLang is named; a changed one is refused at start-up ---------------------------
def test_untested_sglang_version_is_warned_about(monkeypatch, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=registration.__name__)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == registration.__name__]

    registration.register()
    assert warnings() == []  # the tested release: nothing to say
    monkeypatch.setattr(sglang, "__version__", "0.6.0")
    registration.register()
    (message,) = warnings()
    assert "0.6.0" in message and "0.5.23" in message


def test_changed_substitution_targets_fail_at_start(draft_dir: Path, monkeypatch) -> None:
    """What worker.py rebinds and overrides matches SGLang 0.5.23; a changed signature or a
    caller that no longer calls a rebound name stops the server at start-up."""
    assert substitution_problems() == []

    def verify_input_with_a_new_keyword(batch, draft_input, parent_list, top_scores_index,
                                        draft_tokens, draft_probs, *, target_worker, topk,
                                        num_steps, num_draft_tokens, tree_mask_mode, device,
                                        kv_loc_plan):
        raise AssertionError("never called")

    monkeypatch.setattr(eagle_worker_v2, "build_eagle_verify_input",
                        verify_input_with_a_new_keyword)
    with pytest.raises(RuntimeError, match=r"build_eagle_verify_input takes keyword .*kv_loc_plan"):
        resolve(draft_dir)
    monkeypatch.undo()

    def draft_forward_elsewhere(self, forward_batch):
        return self.organize_elsewhere(forward_batch)

    monkeypatch.setattr(eagle_worker_v2.EagleDraftWorker, "draft_forward",
                        draft_forward_elsewhere)
    with pytest.raises(RuntimeError, match="no longer calls organize_draft_results"):
        resolve(draft_dir)
    monkeypatch.undo()
    assert substitution_problems() == []


# -- multimodal pad values never reach a tree -----------------------------------------------------
PAD = MM_PAD_SHIFT_VALUE + 7  # an image's pad value, as SGLang's scheduler writes it
IMAGE = 9  # the in-vocabulary image placeholder the tokenizer left in the prompt


def padded_request(rid: str) -> Req:
    """A Req as SGLang's scheduler leaves a multimodal one: ``origin_input_ids`` padded with
    the image's pad values, ``origin_input_ids_unpadded`` the tokenizer's ids."""
    req = Req(rid, "", array("q", [5, 6, IMAGE, 7, 5, 6]), SamplingParams())
    req.origin_input_ids = array("q", [5, 6, PAD, PAD, PAD, 7, 5, 6])
    return req


def test_pad_values_in_the_prompt_never_reach_a_tree() -> None:
    """The request's own text is what suffix retrieval continues ("5 6" -> what followed "5 6"
    in the prompt); with the padded ids that would be a pad value."""
    n, topk, steps = 12, 3, 2
    state = GraftState(GraftSettings(threshold=0.05), n, VOCAB)
    req = padded_request("r")
    assert state.sync([req]) == ["r"]
    lists = eagle_loop_lists(torch.Generator().manual_seed(0), 1, topk, steps, VOCAB)
    tree, _ = step_tree(state.step, ["r"], torch.tensor([6]), torch.tensor([8]),
                        *all_candidates(*lists, num_draft_token=n), topk)
    assert bool((tree.tokens < VOCAB).all())
    grafted = (tree.source & NodeSource.RETRIEVED) > 0
    assert IMAGE in tree.tokens[grafted].tolist()  # retrieval did graft the prompt's text
    req.output_ids.extend([8, 5, 6])
    state.sync([req])  # incremental: counted from the unpadded prompt
    assert state.requests.indexed("r") == 6 + 3
    assert state.retriever.propose("r", (), 4).tokens[:1] == [8]  # the new tokens are indexed


def test_radix_keys_with_pad_values_feed_only_tokens(request: pytest.FixtureRequest) -> None:
    """The radix cache's keys of a multimodal request carry its pad values; the corpus the
    GRAFT worker's feed builds from them holds only vocabulary tokens."""
    import functools

    from graft_sglang.plugin import radix_feed
    from graft_sglang.retrieval.tenants import radix_tenant

    alloc, (_, cache) = caches()
    state = GraftState(GraftSettings(), 8, VOCAB)
    state.radix_feed.activate()
    request.addfinalizer(functools.partial(setattr, radix_feed, "_active", None))
    insert(cache, [1, 2, PAD, PAD, 3, 4, 1, 2], alloc)
    # the corpus holds "1 2 3 4 1 2": after "2" comes 3, not a pad value
    state.retriever.start_request("q", [42, 2], tenant=radix_tenant(None, None))
    assert state.retriever.propose("q", (), 3).tokens == [3, 4, 1]
