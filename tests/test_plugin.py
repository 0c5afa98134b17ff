"""The SGLang plugin against SGLang 0.5.23's real classes, on CPU: discovery and registration,
server-argument resolution, the verify input built from the Graft tree and per-source
accounting (the radix-cache feed: test_radix_feed.py)."""

from __future__ import annotations

import json
from array import array
from pathlib import Path

import pytest
import torch

sglang = pytest.importorskip("sglang")

from sglang.srt.arg_groups.overrides import resolving_view  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import InsertParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from sglang.srt.server_args import prepare_server_args  # noqa: E402
from sglang.srt.speculative.eagle_info import EagleVerifyInput  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402

from graft_sglang.calibration import Calibration  # noqa: E402
from graft_sglang.plugin import registration  # noqa: E402
from graft_sglang.plugin.algo import GraftAlgo, draft_is_eagle3  # noqa: E402
from graft_sglang.plugin.settings import GraftSettings, server_settings  # noqa: E402
from graft_sglang.plugin.verify_input import (  # noqa: E402
    GraftVerifyInput,
    build_verify_input,
    draft_candidates,
    write_mask,
)
from graft_sglang.plugin.worker import GraftState, all_candidates, substituted  # noqa: E402
from graft_sglang.tree.builder import GraftConfig, NodeSource, build_graft_tree  # noqa: E402
from graft_sglang.tree.draft import from_eagle_draft_loop  # noqa: E402
from graft_sglang.tree.layout import TreeMaskMode, tree_layout, tree_mask  # noqa: E402
from tests.random_inputs import eagle_loop_lists, random_retrieved  # noqa: E402

torch.set_num_threads(1)
load_plugins()


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test's environment is read anew (a server process reads it once)."""
    server_settings.cache_clear()
    yield
    server_settings.cache_clear()


TINY_EAGLE3_CONFIG = {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama",
                      "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                      "num_key_value_heads": 4, "num_hidden_layers": 1, "vocab_size": 1000,
                      "max_position_embeddings": 2048}


@pytest.fixture
def draft_dir(tmp_path: Path) -> Path:
    """A draft-head directory with a real (tiny) EAGLE-3 Llama config."""
    (tmp_path / "config.json").write_text(json.dumps(TINY_EAGLE3_CONFIG))
    return tmp_path


def resolve(draft_dir: Path, **spec: object):
    """SGLang's own start-up argument path of ``python -m sglang.launch_server`` (command-line
    parsing, then the whole resolution pipeline) for GRAFT with ``spec`` as flags."""
    argv = ["--model-path", str(draft_dir), "--speculative-algorithm", "graft",
            "--speculative-draft-model-path", str(draft_dir), "--device", "cpu"]
    for name, value in spec.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    args = prepare_server_args(argv)
    args.resolve_once()
    return resolving_view(args)


# -- registration --------------------------------------------------------------------------------
def test_load_plugins_registers_graft_idempotently() -> None:
    from importlib.metadata import entry_points

    from sglang.srt.plugins.hook_registry import HookRegistry

    (ep,) = [e for e in entry_points(group="sglang.srt.plugins") if e.name == "graft"]
    assert ep.value == "graft_sglang.plugin.registration:register"
    # the hooks were registered while load_plugins() ran the "graft" entry point
    sources = {src.plugin_name for hooks in HookRegistry._hooks.values() for _, h, src in hooks
               if h.__module__.startswith("graft_sglang.")}
    assert sources == {"graft"}
    algo = SpeculativeAlgorithm.from_string("GRAFT")
    assert isinstance(algo, GraftAlgo)
    registration.register()  # a second load in the same process is a no-op
    assert SpeculativeAlgorithm.from_string("graft") is algo
    assert algo.is_eagle() and algo.need_topk() and algo.carries_draft_hidden_states()
    assert algo.supports_overlap  # the spec-v2 overlap schedule; --disable-overlap-schedule: off
    from graft_sglang.plugin.worker import GraftWorker
    assert algo.factory(None) is GraftWorker


def test_eagle3_detected_from_draft_config(draft_dir: Path, tmp_path_factory) -> None:
    assert draft_is_eagle3(str(draft_dir))
    eagle = tmp_path_factory.mktemp("eagle")
    (eagle / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle"]}))
    assert not draft_is_eagle3(str(eagle))


# -- server arguments (SGLang's real command-line parsing and resolution pipeline) -------------
def test_server_args_defaults(draft_dir: Path) -> None:
    cfg = resolve(draft_dir)
    assert cfg.speculative_algorithm == "GRAFT"
    assert (cfg.speculative_num_steps, cfg.speculative_eagle_topk,
            cfg.speculative_num_draft_tokens) == (5, 8, 32)
    assert cfg.disable_overlap_schedule


def test_server_args_explicit_tree(draft_dir: Path) -> None:
    cfg = resolve(draft_dir, speculative_num_steps=3, speculative_eagle_topk=4,
                  speculative_num_draft_tokens=37)  # 1 + 4 + 2 * 16: the whole draft tree
    assert (cfg.speculative_num_steps, cfg.speculative_eagle_topk,
            cfg.speculative_num_draft_tokens) == (3, 4, 37)


@pytest.mark.parametrize("spec, flag", [
    (dict(speculative_num_steps=3, speculative_eagle_topk=1, speculative_num_draft_tokens=4),
     "--speculative-eagle-topk must be >= 2"),
    (dict(speculative_num_steps=3, speculative_eagle_topk=4, speculative_num_draft_tokens=38),
     r"--speculative-num-draft-tokens must be in \[2, 37\]"),
    (dict(speculative_num_steps=3), "give all of --speculative-num-steps"),
    (dict(speculative_use_rejection_sampling=True), "--speculative-use-rejection-sampling"),
    (dict(page_size=16, attention_backend="torch_native"), "--page-size > 1 needs"),
    (dict(pp_size=2), "--pp-size 1 only"),
    (dict(speculative_adaptive=True), "--speculative-adaptive is not supported"),
])
def test_server_args_refused(draft_dir: Path, spec: dict, flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        resolve(draft_dir, **spec)


def test_trtllm_backend_refused(draft_dir: Path) -> None:
    """On CPU SGLang's own checks refuse trtllm_mha before GRAFT's, so this runs the
    speculative step of the pipeline (``handle_speculative_decoding``) on a real ServerArgs."""
    from sglang.srt.arg_groups.speculative_hook import handle_speculative_decoding
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path=str(draft_dir), speculative_algorithm="GRAFT",
                      speculative_draft_model_path=str(draft_dir), device="cpu",
                      attention_backend="trtllm_mha")
    with pytest.raises(ValueError, match="trtllm_mha verifies chains only"):
        handle_speculative_decoding(args)


def test_bad_graft_env_refused_at_startup(draft_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("SGLANG_GRAFT_THRESHOLD", "high")
    with pytest.raises(ValueError, match="SGLANG_GRAFT_THRESHOLD"):
        resolve(draft_dir)
    monkeypatch.delenv("SGLANG_GRAFT_THRESHOLD")
    monkeypatch.setenv("SGLANG_GRAFT_TRESHOLD", "0.2")  # a typo is not silently ignored
    with pytest.raises(ValueError, match="unknown Graft setting"):
        resolve(draft_dir)


def test_settings_from_env() -> None:
    s = GraftSettings.from_env({"SGLANG_GRAFT_THRESHOLD": "none", "SGLANG_GRAFT_ROOT_NODES": "7",
                                "SGLANG_GRAFT_RADIX_FEED": "0", "SGLANG_GRAFT_EAGLE3": "1"})
    assert s.threshold is None and not s.radix_feed and s.eagle3
    assert s.recipe(32).plan.root_nodes == 7
    assert GraftSettings.from_env({}).recipe(32).plan.root_nodes == 31


def test_paper_mode_settings() -> None:
    s = GraftSettings.from_env({"SGLANG_GRAFT_MODE": "graft-paper"},
                               calibration=Calibration(stage_thresholds=(0.3, 0.2, 0.1)))
    assert (s.retrieval, s.stage_levels, s.stage_thresholds) == ("successor", (0, 1, 5),
                                                                 (0.3, 0.2, 0.1))
    policy = s.stage_policy()
    assert policy is not None and [policy.draft_quota(i, 61) for i in range(3)] == [8, 24, 40]
    assert s.recipe(32).config.threshold is None and s.recipe(32).stop.stop_below is None
    assert s.recipe(32).plan.max_slots == 0  # the successor table alone
    s = GraftSettings.from_env({"SGLANG_GRAFT_MODE": "graft-paper", "SGLANG_GRAFT_RETRIEVAL":
                                "both", "SGLANG_GRAFT_STAGE_LEVELS": "0,2",
                                "SGLANG_GRAFT_STAGE_THRESHOLDS": "0.4,0.2"})
    assert s.retrieval == "both" and s.stage_policy().levels == (0, 2)
    assert s.recipe(32).plan.root_nodes == 31
    graft = GraftSettings.from_env({"SGLANG_GRAFT_THRESHOLD": "0.2"})
    assert graft.stage_policy() is None and graft.recipe(32).stop.stop_below == 0.2
    # no host reads in a server's step
    assert not GraftState(graft, 32, None).step.config.check_inputs
    for env, match in [
        ({"SGLANG_GRAFT_MODE": "eagle"}, "SGLANG_GRAFT_MODE must be one of"),
        ({"SGLANG_GRAFT_RETRIEVAL": "radix"}, "SGLANG_GRAFT_RETRIEVAL must be one of"),
        ({"SGLANG_GRAFT_MODE": "graft-paper", "SGLANG_GRAFT_STAGE_THRESHOLDS": "0.3,0.2"},
         "as many thresholds"),
        ({"SGLANG_GRAFT_MODE": "graft-paper", "SGLANG_GRAFT_STAGE_LEVELS": "1,0,5"}, "ascend"),
        ({"SGLANG_GRAFT_STAGE_LEVELS": "0;1"}, "comma-separated"),
        ({"SGLANG_GRAFT_SUCCESSOR_K": "0"}, "SUCCESSOR_K must be >= 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            GraftSettings.from_env(env)


def test_paper_mode_server_args(draft_dir: Path, monkeypatch) -> None:
    """graft-paper drafts one level past its deepest checkpoint by default, and refuses a
    checkpoint the draft loop never reaches."""
    monkeypatch.setenv("SGLANG_GRAFT_MODE", "graft-paper")
    cfg = resolve(draft_dir)
    assert (cfg.speculative_num_steps, cfg.speculative_eagle_topk,
            cfg.speculative_num_draft_tokens) == (6, 8, 32)
    with pytest.raises(ValueError, match=r"level 5 needs --speculative-num-steps >= 6"):
        resolve(draft_dir, speculative_num_steps=5, speculative_eagle_topk=8,
                speculative_num_draft_tokens=32)


# -- draft loop output -> Graft tree -> SGLang's verify input ------------------------------------
def test_all_candidates_matches_draft_loop_layout() -> None:
    gen = torch.Generator().manual_seed(0)
    topk, steps = 4, 3
    lists = eagle_loop_lists(gen, 2, topk, steps, 50)
    parent_list, scores, tokens = all_candidates(*lists, num_draft_token=16)
    got = draft_candidates(parent_list, scores, tokens, topk)
    want = from_eagle_draft_loop(*lists, topk)
    for name in ("tokens", "parents", "scores"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name))


def graft_tree(seed: int = 1, bs: int = 3, n: int = 24, topk: int = 4, steps: int = 3):
    gen = torch.Generator().manual_seed(seed)
    lists = eagle_loop_lists(gen, bs, topk, steps, 50)
    draft = draft_candidates(*all_candidates(*lists, num_draft_token=n), topk)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 50, 12)
    seq_lens = torch.tensor([5, 9, 17])[:bs]
    roots = torch.randint(0, 50, (bs,), generator=gen)
    tree = build_graft_tree(roots, seq_lens, draft, retrieved,
                            GraftConfig(budget=n, threshold=0.05))
    return tree, seq_lens


@pytest.mark.parametrize("mode", list(TreeMaskMode))
def test_verify_input_from_graft_tree(mode: TreeMaskMode) -> None:
    tree, seq_lens = graft_tree()
    bs, n = tree.tokens.shape
    vi = build_verify_input(tree, seq_lens, mode, topk=4, num_steps=3)
    assert isinstance(vi, EagleVerifyInput) and isinstance(vi, GraftVerifyInput)
    assert vi.max_tree_depth == n and vi.tree_topk == -1 and vi.draft_token_num == n
    assert vi.is_verify_input()
    assert vi.draft_token.shape == (bs * n,) and vi.draft_token.dtype == torch.int64
    assert vi.positions.shape == (bs * n,) and vi.positions.dtype == torch.int64
    torch.testing.assert_close(vi.positions.view(bs, n),
                               seq_lens[:, None] + tree.layout.depth)
    for name in ("retrieve_index", "retrieve_next_token", "retrieve_next_sibling"):
        assert torch.equal(getattr(vi, name), getattr(tree.layout, name))
        assert getattr(vi, name).dtype == torch.int64  # SGLang's retrieve buffers are long
    assert torch.equal(vi.custom_mask, tree_mask(tree.layout.ancestors, seq_lens, mode))
    if mode == TreeMaskMode.QLEN_ONLY:
        assert vi.custom_mask.numel() == bs * n * n
    elif mode == TreeMaskMode.FULL_MASK:
        assert vi.custom_mask.numel() == int((seq_lens + n).sum()) * n
    # every grafted node sits below its parent: the mask row of a node covers its ancestors
    assert bool((tree.source[:, 0] == NodeSource.ROOT).all())


def test_worker_substitution_targets_exist() -> None:
    """The names GraftDraftWorker / GraftWorker rebind are the ones EAGLE V2 calls by name."""
    import inspect

    from sglang.srt.speculative import eagle_worker_v2

    assert "build_eagle_verify_input(" in inspect.getsource(
        eagle_worker_v2.EagleDraftWorker.draft)
    assert "organize_draft_results(" in inspect.getsource(
        eagle_worker_v2.EagleDraftWorker.draft_forward)
    assert "EagleDraftWorker(" in inspect.getsource(eagle_worker_v2.EAGLEWorkerV2.__init__)
    original = eagle_worker_v2.organize_draft_results
    with pytest.raises(RuntimeError), substituted(eagle_worker_v2, organize_draft_results=None):
        raise RuntimeError
    assert eagle_worker_v2.organize_draft_results is original  # restored even on error


@pytest.mark.parametrize(("n", "dtype"), [(8, torch.uint8), (16, torch.int16), (32, torch.int32)])
def test_bitpacked_mask_into_backend_buffer(n: int, dtype: torch.dtype) -> None:
    """SGLang's packed buffers are 1/2/4-byte integers per row; bytes land little endian."""
    parents = torch.tensor([[-1, *range(n - 1)]])  # a chain
    anc = tree_layout(parents, torch.tensor([0])).ancestors
    packed = tree_mask(anc, torch.tensor([0]), TreeMaskMode.QLEN_ONLY_BITPACKING)
    buffer = torch.zeros(4 * n, dtype=dtype)
    write_mask(packed, buffer)
    rows = buffer[:n].to(torch.int64) & ((1 << (8 * buffer.element_size())) - 1)
    assert rows.tolist() == [(1 << (i + 1)) - 1 for i in range(n)]


def test_verify_input_written_into_backend_buffer() -> None:
    tree, seq_lens = graft_tree()
    buffer = torch.zeros(8 * tree.budget * tree.budget, dtype=torch.bool)  # max_bs 8
    vi = build_verify_input(tree, seq_lens, TreeMaskMode.QLEN_ONLY, topk=4, num_steps=3,
                            mask_buffer=buffer)
    assert vi.custom_mask is buffer
    want = tree_mask(tree.layout.ancestors, seq_lens, TreeMaskMode.QLEN_ONLY).reshape(-1)
    assert torch.equal(buffer[: want.numel()], want)
    with pytest.raises(ValueError, match="does not fit"):
        build_verify_input(tree, seq_lens, TreeMaskMode.QLEN_ONLY, topk=4, num_steps=3,
                           mask_buffer=torch.zeros(4, dtype=torch.bool))


def test_accounting_by_source() -> None:
    tree, seq_lens = graft_tree()
    state = GraftState(GraftSettings(), tree.budget, None)
    state.last_input = build_verify_input(tree, seq_lens, TreeMaskMode.QLEN_ONLY, topk=4,
                                          num_steps=3)
    n = tree.budget
    # accept the longest root-to-leaf path of each request (flat node ids, like SGLang's)
    depth = tree.layout.depth
    accept_index = torch.full((tree.batch_size, n), -1)
    lens = torch.zeros(tree.batch_size, dtype=torch.int64)
    want_draft = want_grafted = 0
    for b in range(tree.batch_size):
        node, path = int(depth[b].argmax()), []
        while node >= 0:
            path.append(node)
            node = int(tree.parents[b, node])
        path = path[::-1]
        accept_index[b, : len(path)] = torch.tensor(path) + b * n
        lens[b] = len(path)
        for i in path[1:]:
            grafted = bool(tree.source[b, i] & NodeSource.RETRIEVED) and not bool(
                tree.source[b, i] & NodeSource.DRAFT)
            want_grafted += grafted
            want_draft += not grafted
    state.account(accept_index, lens)
    assert (state.accepted_draft, state.accepted_grafted) == (want_draft, want_grafted)
    assert state.steps == 1 and state.last_input is None


# -- radix caches (the feed's tests: test_radix_feed.py) ----------------------------------------
def insert(cache, tokens: list[int], alloc) -> None:
    cache.insert(InsertParams(key=RadixKey(array("q", tokens)), value=alloc.alloc(len(tokens))))


def caches():
    """SGLang's two prefix caches, built with SGLang's own CPU test fixtures (real pools)."""
    import sglang.test.unified_allocator_fixtures as fixtures

    fixtures.setup_allocator_context()
    alloc, unified = fixtures.build_swa_cache(occupancy=0)
    return alloc, [unified, RadixCache.create_simulated(mock_allocator=alloc)]


def test_graft_metrics_beside_spec_accept_length() -> None:
    from sglang.srt.managers.scheduler_components.internal_state import (
        SchedulerInternalStateController,
    )

    from graft_sglang.plugin.metrics import graft_metrics

    # load_plugins applied the AFTER hook on the method that writes avg_spec_accept_length
    assert hasattr(SchedulerInternalStateController._add_speculative, "__wrapped__")
    state = GraftState(GraftSettings(), 8, None)
    draft, retrieved = int(NodeSource.DRAFT), int(NodeSource.RETRIEVED)
    source = torch.tensor([[0, draft, retrieved, draft | retrieved, 0]])
    for _ in range(3):  # root, a draft node, a grafted one, a merged one (counts as draft)
        state.accepts.add(source, torch.tensor([[0, 1, 2, 3, -1]]), torch.tensor([4]))
    state.stops = {1: 4, 0: 2}
    state.plain_steps = 1
    state.widths = {8: 2, 1: 1}
    assert graft_metrics(state) == {"graft_steps": 3, "graft_accepted_draft_tokens": 6,
                                    "graft_accepted_grafted_tokens": 3,
                                    "graft_grafted_share": 1 / 3,
                                    "graft_plain_steps": 1,
                                    "graft_verify_width_1_steps": 1,
                                    "graft_verify_width_8_steps": 2,
                                    "graft_draft_stops_after_level_0": 2,
                                    "graft_draft_stops_after_level_1": 4}


def test_request_state_follows_sglang_reqs() -> None:
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    state = GraftState(GraftSettings(), 8, None)
    reqs = [Req(f"r{i}", "", array("q", [5, 6, 7, i]), SamplingParams()) for i in range(2)]
    assert state.sync(reqs) == ["r0", "r1"]
    reqs[0].output_ids.extend([5, 6, 7])  # r0 decodes its prompt's start again
    state.sync(reqs)
    assert (state.requests.indexed("r0"), state.requests.indexed("r1")) == (7, 4)
    # the request's own text is indexed incrementally: after "5 6 7" comes "0", then "5 6 7"
    assert state.retriever.propose("r0", (), 2).tokens == [0, 5]
    state.finish("r0")
    state.finish("r0")  # finishing twice (abort after finish) is harmless
    assert sorted(state.retriever.live_requests) == ["r1"]
    assert state.requests.indexed("r0") is None


def test_requests_retrieve_only_their_tenants_text() -> None:
    """The request sync gives the retriever each request's radix-cache namespace
    (``extra_key``, ``cache_salt``) as its tenant: a finished request's text reaches later
    requests of that tenant only."""
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    state = GraftState(GraftSettings(radix_feed=False), 8, None)
    first = Req("a", "", array("q", [1, 2, 3]), SamplingParams(), cache_salt="A")
    first.output_ids.extend([5, 6, 7, 40, 41, 42])  # "5 6 7" continues with 40 only here
    state.sync([first])
    state.finish("a")  # its text joins its tenant's shared corpus
    for rid, salt, key, sees in (("b", "B", None, False), ("c", "A", None, True),
                                 ("d", None, None, False), ("e", "A", "lora", False)):
        req = Req(rid, "", array("q", [9, 5, 6, 7]), SamplingParams(), cache_salt=salt,
                  extra_key=key)
        state.sync([req])
        assert (state.retriever.propose(rid, (), 4).tokens[:1] == [40]) == sees, rid


def test_plugin_step_loop_is_lossless_against_greedy_decoding() -> None:
    """The worker's per-step pieces (request sync, draft-loop conversion, Graft build, verify
    input, accounting) around a greedy tree verify (``graft_sglang.verify``, SGLang's kernel
    semantics) reproduce plain token-by-token greedy decoding of a deterministic target."""
    from tests.plugin_loop import greedy_reference, run_worker_steps

    vocab, topk, steps, n, new_tokens = 12, 3, 3, 16, 60
    gen = torch.Generator().manual_seed(7)
    table = torch.randint(0, vocab, (vocab, vocab), generator=gen)  # next = table[a, b]

    def next_token(context: list[int]) -> int:
        return int(table[context[-2], context[-1]])

    prompts = [[1, 2, 3, 4], [5, 6, 5, 6, 7]]
    state = GraftState(GraftSettings(), n, vocab)
    outputs = run_worker_steps(state, next_token, prompts, new_tokens, vocab, topk, steps, gen)
    assert outputs == [greedy_reference(next_token, p, new_tokens) for p in prompts]
    assert state.steps < new_tokens // 2  # speculation did work...
    assert state.accepted_grafted > 0  # ...and grafted nodes were among the accepted
