"""The SGLang plugin against SGLang 0.5.23's real classes (CPU)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from sglang.srt.arg_groups.arg_utils import record_fields
from sglang.srt.arg_groups.overrides import resolving_view
from sglang.srt.arg_groups.speculative_hook import handle_speculative_decoding
from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import prepare_server_args
from sglang.srt.speculative import eagle_worker_v2
from sglang.srt.speculative.eagle_info import EagleVerifyInput
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

from graft_sglang.plugin.algo import GraftAlgo, draft_is_eagle3
from graft_sglang.plugin.registration import register
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.plugin.verify_input import (
    GraftVerifyInput,
    build_verify_input,
    draft_candidates,
    write_mask,
)
from graft_sglang.plugin.worker import all_candidates, substituted
from graft_sglang.tree.builder import GraftConfig, build_graft_tree
from graft_sglang.tree.draft import from_eagle_draft_loop
from graft_sglang.tree.layout import TreeMaskMode, tree_layout, tree_mask
from graft_sglang.tree.retrieved import RetrievedCandidates
from tests.random_inputs import eagle_draft


def test_entry_point_registers_graft() -> None:
    load_plugins()  # discovers graft_sglang through its sglang.srt.plugins entry point
    algo = SpeculativeAlgorithm.from_string("graft")
    assert isinstance(algo, GraftAlgo) and algo.name == "GRAFT"
    assert algo.is_eagle() and algo.need_topk() and algo.carries_draft_hidden_states()
    assert algo.is_speculative() and not algo.is_ngram()
    register()  # idempotent: a second call in the same process is a no-op
    assert SpeculativeAlgorithm.from_string("GRAFT") is algo


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eagle3")
    (d / "config.json").write_text(json.dumps(
        {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama"}))
    return d


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig

    d = tmp_path_factory.mktemp("target")
    LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                num_attention_heads=4, vocab_size=128).save_pretrained(d)
    return d


def resolve(draft_dir: Path, *extra: str, target: Path):
    """SGLang's own speculative-argument resolution on a real ServerArgs."""
    load_plugins()
    sa = prepare_server_args(["--model-path", str(target), "--speculative-algorithm", "graft",
                              "--speculative-draft-model-path", str(draft_dir),
                              "--device", "cpu", *extra])
    sa._raw_input = {f.name: getattr(sa, f.name) for f in record_fields(type(sa))}
    sa._resolved_overrides = []
    handle_speculative_decoding(sa)
    return resolving_view(sa)


def test_server_args_defaults(draft_dir: Path, target_dir: Path) -> None:
    v = resolve(draft_dir, target=target_dir)
    assert v.speculative_algorithm == "GRAFT"
    assert (v.speculative_num_steps, v.speculative_eagle_topk,
            v.speculative_num_draft_tokens) == (5, 8, 32)
    assert v.max_running_requests == 48 and v.disable_overlap_schedule
    assert not v.enable_mixed_chunk
    v = resolve(draft_dir, "--speculative-num-steps", "3", "--speculative-eagle-topk", "4",
                "--speculative-num-draft-tokens", "16", "--max-running-requests", "8",
                target=target_dir)
    assert (v.speculative_num_steps, v.speculative_eagle_topk,
            v.speculative_num_draft_tokens, v.max_running_requests) == (3, 4, 16, 8)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--speculative-eagle-topk", "1", "--speculative-num-steps", "3",
          "--speculative-num-draft-tokens", "4"], "eagle-topk must be >= 2"),
        (["--speculative-eagle-topk", "2", "--speculative-num-steps", "2",
          "--speculative-num-draft-tokens", "20"], r"num-draft-tokens must be in \[2, 7\]"),
        (["--speculative-eagle-topk", "4"], "give all of"),
        (["--speculative-use-rejection-sampling"], "rejection-sampling"),
    ],
)
def test_server_args_refused(draft_dir: Path, target_dir: Path, extra: list[str],
                             match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve(draft_dir, *extra, target=target_dir)


def test_server_args_refuse_bad_graft_settings(draft_dir: Path, target_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGLANG_GRAFT_THRESHOLD", "high")
    with pytest.raises(ValueError, match="SGLANG_GRAFT_THRESHOLD"):
        resolve(draft_dir, target=target_dir)


def test_settings_from_env() -> None:
    s = GraftSettings.from_env({"SGLANG_GRAFT_THRESHOLD": "none", "SGLANG_GRAFT_ROOT_NODES": "5",
                                "SGLANG_GRAFT_EAGLE3": "1", "SGLANG_GRAFT_TP_BROADCAST": "1"})
    assert s.threshold is None and s.eagle3 is True and s.tp_broadcast
    assert s.retrieval_plan(32).root_nodes == 5 and s.retrieval_plan(32).anchor_nodes == 8
    assert s.graft_config(32).budget == 32
    for env, match in [({"SGLANG_GRAFT_TYPO": "1"}, "unknown Graft setting"),
                       ({"SGLANG_GRAFT_EAGLE3": "maybe"}, "EAGLE3"),
                       ({"SGLANG_GRAFT_RADIX_FEED": "yes"}, "RADIX_FEED")]:
        with pytest.raises(ValueError, match=match):
            GraftSettings.from_env(env)


def test_eagle3_detection(draft_dir: Path, tmp_path: Path) -> None:
    assert draft_is_eagle3(str(draft_dir))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle"]}))
    assert not draft_is_eagle3(str(tmp_path))
    assert not draft_is_eagle3(None)


def test_all_candidates_keeps_sglang_layout() -> None:
    """The substituted organize step returns what ``draft_candidates`` reads back into exactly
    ``from_eagle_draft_loop``'s candidates, from SGLang's real select_top_k_tokens."""
    from sglang.srt.speculative.spec_utils import select_top_k_tokens

    torch.manual_seed(0)
    bs, topk, steps, vocab = 2, 3, 4, 30
    lists: tuple[list, list, list] = ([], [], [])
    hidden, scores = torch.randn(bs, 4), None
    p, i = torch.topk(torch.softmax(torch.randn(bs, vocab), -1), topk, -1)
    for level in range(steps):
        _, hidden, scores, info = select_top_k_tokens(level, p, i, hidden, scores, topk)
        for lst, x in zip(lists, info, strict=True):
            lst.append(x)
        p, i = torch.topk(torch.softmax(torch.randn(bs * topk, vocab), -1), topk, -1)
    parent_list, all_scores, tokens = all_candidates(*lists, 0)
    got = draft_candidates(parent_list, all_scores, tokens, topk, steps)
    want = from_eagle_draft_loop(*lists, topk)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.parents, want.parents)
    assert torch.equal(got.scores, want.scores)


def test_worker_substitution_targets_exist() -> None:
    """The names GraftDraftWorker rebinds are the ones EAGLE V2's draft path calls."""
    draft_src = inspect.getsource(eagle_worker_v2.EagleDraftWorker.draft)
    forward_src = inspect.getsource(eagle_worker_v2.EagleDraftWorker.draft_forward)
    assert "build_eagle_verify_input(" in draft_src
    assert "organize_draft_results(" in forward_src
    original = eagle_worker_v2.organize_draft_results
    with substituted(eagle_worker_v2, organize_draft_results=all_candidates):
        assert eagle_worker_v2.organize_draft_results is all_candidates
    assert eagle_worker_v2.organize_draft_results is original
    with pytest.raises(RuntimeError), substituted(eagle_worker_v2, organize_draft_results=None):
        raise RuntimeError
    assert eagle_worker_v2.organize_draft_results is original


@pytest.mark.parametrize("mode", list(TreeMaskMode))
def test_verify_input_is_an_eagle_verify_input(mode: TreeMaskMode) -> None:
    gen = torch.Generator().manual_seed(int(mode))
    bs, n = 3, 16
    draft = eagle_draft(gen, bs, 4, 3, 100)
    tree = build_graft_tree(torch.tensor([1, 2, 3]), torch.tensor([5, 0, 9]), draft,
                            RetrievedCandidates.empty(bs), GraftConfig(budget=n, threshold=0.05))
    seq_lens = torch.tensor([5, 0, 9])
    vi = build_verify_input(tree, seq_lens, mode, topk=4, num_steps=3)
    assert isinstance(vi, EagleVerifyInput) and isinstance(vi, GraftVerifyInput)
    assert vi.is_verify_input()
    assert vi.max_tree_depth == n and vi.tree_topk == -1  # grafted chains can go deeper
    assert vi.draft_token.shape == (bs * n,) and vi.draft_token.dtype == torch.int64
    assert vi.positions.shape == (bs * n,) and vi.positions.dtype == torch.int64
    for t in (vi.retrieve_index, vi.retrieve_next_token, vi.retrieve_next_sibling):
        assert t.shape == (bs, n) and t.dtype == torch.int64
    assert torch.equal(vi.custom_mask, tree_mask(tree.layout.ancestors, seq_lens, mode))


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
    with pytest.raises(ValueError, match="does not fit"):
        write_mask(packed, torch.zeros(1, dtype=torch.uint8))
