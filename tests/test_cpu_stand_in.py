"""The pure-PyTorch ``sgl_kernel`` stand-in (``graft_sglang/cpu/stand_in``) against independent
statements of each op's semantics: the project's tree layout and reference verify for the tree
ops, written-out loops for the cache bookkeeping, a written-out float64 softmax per query and
head for attention (the stand-in itself uses torch's SDPA), the textbook MurmurHash3 for the
sampling hash, and, in one subprocess (``slow``), SGLang's own Triton kernels run by the Triton
interpreter on the same inputs, with the stand-in reached through SGLang's CPU-branch wrappers.

The stand-in is imported under its real name ``sgl_kernel`` only inside the module fixture and
removed from ``sys.modules`` (and its directory from ``sys.path``) afterwards, so later tests see
no ``sgl_kernel``. Its ops stay registered under ``torch.ops.sgl_kernel`` (``*_cpu`` names that no
non-CPU path looks up).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from graft_sglang.tree.layout import TreeMaskMode, tree_layout, tree_mask
from graft_sglang.verify import verify_tree_greedy as reference_verify

REPO = Path(__file__).resolve().parents[1]
STAND_IN_DIR = REPO / "graft_sglang" / "cpu" / "stand_in"


def _import_stand_in() -> ModuleType:
    sys.path.insert(0, str(STAND_IN_DIR))
    try:
        module = importlib.import_module("sgl_kernel")
    finally:
        sys.path.remove(str(STAND_IN_DIR))
    assert Path(module.__file__).resolve().is_relative_to(STAND_IN_DIR)
    return module


@pytest.fixture(scope="module")
def sk() -> Iterator[ModuleType]:
    if "sgl_kernel" in sys.modules:
        pytest.skip("a real sgl_kernel is already imported in this process")
    module = _import_stand_in()
    yield module
    for name in [n for n in sys.modules if n == "sgl_kernel" or n.startswith("sgl_kernel.")]:
        del sys.modules[name]


@pytest.fixture(autouse=True)
def _seeded() -> Iterator[None]:
    """Every test draws the same numbers, and leaves torch's global RNG as it found it."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


ops = torch.ops.sgl_kernel


# ---------------------------------------------------------------------------------------------
# Shared input builders (also used by the Triton-interpreter subprocess).


def eagle_draft(
    rng: random.Random, topk: int, depth: int, n: int, malformed: bool = False
) -> tuple[list[int], list[int], list[int]]:
    """One request of EAGLE's top-k draft in SGLang's encoding: (parent_list, selected_index,
    parents). Candidates are numbered as SGLang flattens its score list: level 0 has ``topk``
    (all expanded), every later level ``topk^2`` of which ``topk`` are expanded. parents[i] is
    the parent node of tree node i (node i >= 1 = i-th smallest selected candidate). With
    ``malformed`` one selected node's parent is swapped out of the selection (parents[i] = -2).
    """
    parent_of = {k: -1 for k in range(topk)}
    parent_list = list(range(-1, topk)) if depth > 1 else []
    level = list(range(topk))
    for step in range(1, depth):
        expanded = level if step == 1 else rng.sample(level, topk)
        if step >= 2:
            parent_list += expanded
        base = topk + (step - 1) * topk * topk
        level = []
        for j, parent in enumerate(expanded):
            for k in range(topk):
                parent_of[base + j * topk + k] = parent
                level.append(base + j * topk + k)
    chosen: set[int] = set()
    while len(chosen) < n - 1:
        frontier = [c for c, p in parent_of.items()
                    if c not in chosen and (p == -1 or p in chosen)]
        chosen.add(rng.choice(frontier))
    if malformed:
        inner = [c for c in chosen if parent_of[c] != -1]
        victim = parent_of[rng.choice(inner)]
        chosen.discard(victim)
        chosen.add(rng.choice([c for c in parent_of if c not in chosen and c != victim]))
    selected = sorted(chosen)
    parents = [-1] + [0 if parent_of[c] == -1 else
                      (1 + selected.index(parent_of[c]) if parent_of[c] in chosen else -2)
                      for c in selected]
    return parent_list, selected, parents


def random_parents(rng: random.Random, bs: int, n: int) -> torch.Tensor:
    """[bs, n] random trees (parents precede children)."""
    return torch.tensor([[-1] + [rng.randrange(i) for i in range(1, n)] for _ in range(bs)])


def ragged_pool(rng: random.Random, bs: int, pool_len: int) -> dict[str, torch.Tensor]:
    """A request-to-token map and ragged ranges [start, end) per request (one empty)."""
    rows = 2 * bs + 1
    starts, ends = [], []
    for i in range(bs):
        start = rng.randrange(pool_len // 2)
        length = 0 if i == 1 else rng.randrange(1, pool_len // 2)
        starts.append(start)
        ends.append(start + length)
    return {
        "req_pool_indices": torch.tensor(rng.sample(range(rows), bs)),
        "req_to_token": torch.randint(0, 10_000, (rows, pool_len), dtype=torch.int32,
                                      generator=torch.Generator().manual_seed(rng.randrange(99))),
        "start": torch.tensor(starts),
        "end": torch.tensor(ends),
    }


def accept_indices(rng: random.Random, bs: int, steps: int, n: int) -> torch.Tensor:
    """[bs, steps] int32 accepted flat indices, each row an accepted prefix then -1."""
    rows = []
    for b in range(bs):
        k = rng.randrange(1, steps + 1)
        rows.append(sorted(rng.sample(range(b * n, (b + 1) * n), k)) + [-1] * (steps - k))
    return torch.tensor(rows, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# Package surface.


def test_marker_and_no_weight_packing(sk: ModuleType) -> None:
    """The marker is set and ``convert_weight_packed`` exists nowhere, so SGLang's
    ``cpu_has_amx_support()`` stays False and every layer runs ``forward_native``."""
    assert sk.STAND_IN is True
    assert not hasattr(sk, "convert_weight_packed")
    assert not hasattr(ops, "convert_weight_packed")


SGLANG_CPU_IMPORTS = {  # what SGLang 0.5.23 imports from sgl_kernel with is_cpu() true
    "sgl_kernel": [
        "copy_all_layer_kv_cache_cpu",  # kernels/ops/kvcache/cache_move.py
        "assign_req_to_token_pool_cpu",  # srt/mem_cache/allocation.py
        "assign_draft_cache_locs_contiguous_cpu",  # kernels/ops/speculative/cache_locs.py
        "assign_extend_cache_locs_cpu",
        "fill_accept_out_cache_loc_cpu",  # kernels/ops/speculative/eagle.py
        "fill_bonus_tokens_cpu",
        "build_tree_kernel_efficient_cpu",  # kernels/ops/speculative/spec_tree.py
        "verify_tree_greedy_cpu",
        "rotate_input_ids_cpu",  # kernels/ops/speculative/multi_layer_eagle.py
        "build_draft_decode_metadata_cpu",  # srt/layers/attention/intel_amx_backend.py
        "reconstruct_indices_from_tree_mask_cpu",
    ],
    "sgl_kernel.speculative": ["reconstruct_indices_from_tree_mask"],  # reconstruct_tree.py
    "sgl_kernel.mamba": [  # srt/layers/attention/linear/: gdn_backend, kda_backend, gdn_triton
        "causal_conv1d_fn_cpu", "causal_conv1d_update_cpu", "chunk_gated_delta_rule_cpu",
    ],
}
BACKEND_OPS = ["decode_attention_cpu", "extend_attention_cpu", "init_cpu_threads_env",
               "murmur_hash32_cpu"]
# read by srt/layers/attention/linear/gdn_backend.py, gdn_triton.py; name -> arguments its
# schema takes
NOT_IMPLEMENTED_OPS: dict[str, Callable[[torch.Tensor], tuple[Any, ...]]] = {
    "fused_gdn_gating_cpu": lambda t: (t,) * 4,
    "fused_sigmoid_gating_delta_rule_update_cpu": lambda t: (*(t,) * 10, True),
}


def test_every_imported_name_resolves(sk: ModuleType) -> None:
    for module_name, names in SGLANG_CPU_IMPORTS.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert callable(getattr(module, name)), f"{module_name}.{name}"
    for name in [*BACKEND_OPS, *NOT_IMPLEMENTED_OPS]:
        assert hasattr(ops, name), name


@pytest.mark.parametrize("name", SGLANG_CPU_IMPORTS["sgl_kernel.mamba"])
def test_not_implemented_names_raise_naming_themselves(sk: ModuleType, name: str) -> None:
    raiser = getattr(importlib.import_module("sgl_kernel.mamba"), name)
    with pytest.raises(NotImplementedError, match=rf"sgl_kernel\.mamba\.{name}\b"):
        raiser(torch.zeros(1), silu_activation=True)


@pytest.mark.parametrize("name", list(NOT_IMPLEMENTED_OPS))
def test_not_implemented_ops_raise_naming_themselves(sk: ModuleType, name: str) -> None:
    with pytest.raises(NotImplementedError, match=rf"torch\.ops\.sgl_kernel\.{name}\b"):
        getattr(ops, name)(*NOT_IMPLEMENTED_OPS[name](torch.zeros(1)))


def test_unknown_names_stay_absent(sk: ModuleType) -> None:
    """Names SGLang probes with try/except ImportError or hasattr must not appear."""
    with pytest.raises(ImportError):
        exec("from sgl_kernel import weak_ref_tensor", {})
    assert not hasattr(ops, "fused_qk_norm_rope_cpu")


# ---------------------------------------------------------------------------------------------
# Request-to-token map and cache locations.


def test_assign_req_to_token_pool(sk: ModuleType) -> None:
    rng = random.Random(1)
    p = ragged_pool(rng, 4, 32)
    lengths = (p["end"] - p["start"]).tolist()
    out_cache_loc = torch.randint(0, 10_000, (sum(lengths) + 3,), dtype=torch.int64)
    expected = p["req_to_token"].clone()
    offset = 0
    for i, length in enumerate(lengths):
        row, start = int(p["req_pool_indices"][i]), int(p["start"][i])
        expected[row, start : start + length] = out_cache_loc[offset : offset + length].int()
        offset += length
    rtt = p["req_to_token"].clone()
    sk.assign_req_to_token_pool_cpu(p["req_pool_indices"], rtt, p["start"].int(), p["end"].int(),
                                    out_cache_loc, 32)
    assert torch.equal(rtt, expected)
    with pytest.raises(ValueError, match="out_cache_loc has"):
        sk.assign_req_to_token_pool_cpu(p["req_pool_indices"], rtt, p["start"], p["end"],
                                        out_cache_loc[:2], 32)


def test_assign_extend_cache_locs(sk: ModuleType) -> None:
    rng = random.Random(2)
    p = ragged_pool(rng, 5, 40)
    lengths = (p["end"] - p["start"]).tolist()
    expected = torch.cat([
        p["req_to_token"][int(p["req_pool_indices"][i]), int(p["start"][i]) : int(p["end"][i])]
        for i in range(5)
    ]).long()
    out = torch.full((sum(lengths) + 2,), -7, dtype=torch.int64)  # sized at capacity
    sk.assign_extend_cache_locs_cpu(p["req_pool_indices"], p["req_to_token"], p["start"], p["end"],
                                    out, 40)
    assert torch.equal(out[: sum(lengths)], expected)
    assert out[sum(lengths):].tolist() == [-7, -7]


def test_assign_draft_cache_locs_contiguous(sk: ModuleType) -> None:
    rtt = torch.randint(0, 10_000, (6, 50), dtype=torch.int32)
    rpi, seq_lens, topk, steps = torch.tensor([4, 0, 2]), torch.tensor([3, 17, 0]), 3, 4
    out = torch.empty(3 * topk * steps, dtype=torch.int64)
    sk.assign_draft_cache_locs_contiguous_cpu(rpi, rtt, seq_lens, out, 50, topk, steps)
    for i in range(3):
        start = int(seq_lens[i])
        got = out[i * topk * steps : (i + 1) * topk * steps]
        assert torch.equal(got, rtt[int(rpi[i]), start : start + topk * steps].long())


def test_build_draft_decode_metadata(sk: ModuleType) -> None:
    rtt = torch.randint(0, 10_000, (5, 40), dtype=torch.int32)
    rpi, seq_lens, topk, steps = torch.tensor([3, 1]), torch.tensor([6, 11]), 4, 3
    draft = sk.build_draft_decode_metadata_cpu(rtt, rpi, seq_lens, topk, steps, 40)
    assert draft.shape == (2 * topk, 40) and draft.dtype == torch.int32
    for b in range(2):
        row, length = rtt[int(rpi[b])], int(seq_lens[b])
        for k in range(topk):
            expected = [*row[:length].tolist(),
                        *row[length + k * steps : length + (k + 1) * steps].tolist()]
            assert draft[b * topk + k, : length + steps].tolist() == expected


def test_fill_accept_out_cache_loc(sk: ModuleType) -> None:
    rng = random.Random(3)
    accept_index = accept_indices(rng, 3, 4, 6)
    out_cache_loc = torch.randint(0, 10_000, (18,), dtype=torch.int64)
    out = torch.full((12,), -5, dtype=torch.int64)
    sk.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, out)
    accepted = [int(out_cache_loc[i]) for i in accept_index.flatten().tolist() if i != -1]
    assert out.tolist() == accepted + [-5] * (12 - len(accepted))


def test_copy_all_layer_kv_cache_overlapping(sk: ModuleType) -> None:
    """Every buffer's rows move by location, all sources read before any target is written."""
    buffers = [torch.randn(12, 2, 4), torch.randn(12, 2, 4), torch.randn(12, 3, 2).half()]
    data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers])
    tgt, src = torch.tensor([5, 6, 0, 11]), torch.tensor([4, 5, 6, 5])  # chains and repeats
    expected = []
    for b in buffers:
        staged = [b[s].clone() for s in src.tolist()]
        moved = b.clone()
        for t, row in zip(tgt.tolist(), staged, strict=True):
            moved[t] = row
        expected.append(moved)
    sk.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src)
    for got, want in zip(buffers, expected, strict=True):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="negative"):
        sk.copy_all_layer_kv_cache_cpu(data_ptrs, strides, torch.tensor([-1]), torch.tensor([0]))


# ---------------------------------------------------------------------------------------------
# Token bookkeeping.


def test_fill_bonus_tokens(sk: ModuleType) -> None:
    accept_tokens = torch.randint(0, 1000, (4, 5), dtype=torch.int32)
    accept_lens = torch.tensor([1, 5, 3, 2], dtype=torch.int32)
    bonus = torch.empty(4, dtype=torch.int32)
    sk.fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus, 5)
    assert bonus.tolist() == [int(accept_tokens[i, int(accept_lens[i]) - 1]) for i in range(4)]
    with pytest.raises(ValueError, match="accept_lens"):
        sk.fill_bonus_tokens_cpu(accept_tokens, torch.zeros(4, dtype=torch.int32), bonus, 5)


@pytest.mark.parametrize("with_select", [False, True])
def test_rotate_input_ids(sk: ModuleType, with_select: bool) -> None:
    starts, lens = [0, 4, 4, 9], [4, 0, 5, 3]
    ids = torch.arange(100, 112)
    new = torch.tensor([-1, -2, -3, -4])
    select = torch.tensor([1, 0, 6, 10]) if with_select else None
    expected = ids.tolist()
    for i, (start, length) in enumerate(zip(starts, lens, strict=True)):
        # shift left by one; the last slot keeps its token unless it is the one overwritten
        expected[start : start + length - 1] = expected[start + 1 : start + length]
        if length:
            slot = int(select[i]) if select is not None else start + length - 1
            expected[slot] = int(new[i])
    sk.rotate_input_ids_cpu(ids, torch.tensor(starts, dtype=torch.int32), torch.tensor(lens),
                            new, select)
    assert ids.tolist() == expected


# ---------------------------------------------------------------------------------------------
# Tree ops against the project's tree layout and reference verify.


@pytest.mark.parametrize(("topk", "depth", "n"), [(1, 1, 2), (2, 3, 5), (4, 3, 8), (3, 5, 12),
                                                  (8, 4, 32)])
@pytest.mark.parametrize("mode", [TreeMaskMode.QLEN_ONLY, TreeMaskMode.FULL_MASK])
def test_build_tree_matches_layout(sk: ModuleType, topk: int, depth: int, n: int,
                                   mode: TreeMaskMode) -> None:
    rng = random.Random(topk * 100 + depth * 10 + n)
    drafts = [eagle_draft(rng, topk, depth, n) for _ in range(3)]
    width = len(drafts[0][0])  # topk * (depth - 1) + 1, or 0 for a single draft step
    parent_list = torch.tensor([d[0] for d in drafts], dtype=torch.int64).reshape(3, width)
    selected = torch.tensor([d[1] for d in drafts], dtype=torch.int64)
    parents = torch.tensor([d[2] for d in drafts])
    seq_lens = torch.tensor([7, 0, 3])
    layout = tree_layout(parents, seq_lens)
    want_mask = tree_mask(layout.ancestors, seq_lens, mode)
    if mode == TreeMaskMode.QLEN_ONLY:
        mask = torch.zeros(3 * n * n, dtype=torch.bool)
    else:
        mask = torch.ones(want_mask.numel(), dtype=torch.bool)  # the caller fills the prefix
    positions = torch.empty(3 * n, dtype=torch.int64)
    links = torch.full((3, 3, n), -1, dtype=torch.int64)
    sk.build_tree_kernel_efficient_cpu(parent_list, selected, seq_lens, mask, positions, *links,
                                       topk, depth, n, int(mode))
    assert torch.equal(mask, want_mask)
    assert torch.equal(positions, layout.positions.flatten())
    assert torch.equal(links[0], layout.retrieve_index)
    assert torch.equal(links[1], layout.retrieve_next_token)
    assert torch.equal(links[2], layout.retrieve_next_sibling)


def test_build_tree_rejects_bad_arguments(sk: ModuleType) -> None:
    parent_list, selected, _ = eagle_draft(random.Random(0), 2, 2, 3)
    args = (torch.tensor([parent_list]), torch.tensor([selected]), torch.tensor([4]))
    positions = torch.full((3,), -9, dtype=torch.int64)
    links = torch.full((3, 1, 3), -1, dtype=torch.int64)
    with pytest.raises(ValueError, match="FULL_MASK \\(0\\) or QLEN_ONLY \\(1\\)"):
        sk.build_tree_kernel_efficient_cpu(*args, torch.zeros(3, dtype=torch.uint8), positions,
                                           *links, 2, 2, 3, 2)
    with pytest.raises(ValueError, match="FULL_MASK tree_mask must have 21 entries"):
        sk.build_tree_kernel_efficient_cpu(*args, torch.ones(9, dtype=torch.bool), positions,
                                           *links, 2, 2, 3, int(TreeMaskMode.FULL_MASK))
    assert positions.tolist() == [-9] * 3 and links.eq(-1).all()  # refused before any write


@pytest.mark.parametrize("n", [2, 6, 16, 33])
def test_reconstruct_indices_matches_layout(sk: ModuleType, n: int) -> None:
    parents = random_parents(random.Random(n), 3, n)
    seq_lens = torch.tensor([5, 0, 12])
    layout = tree_layout(parents, seq_lens)
    mask = tree_mask(layout.ancestors, seq_lens, TreeMaskMode.QLEN_ONLY)
    positions = torch.empty(3 * n, dtype=torch.int64)
    links = torch.empty((3, 3, n), dtype=torch.int64)
    sk.reconstruct_indices_from_tree_mask_cpu(mask, seq_lens, positions, *links, 3, n)
    assert torch.equal(positions, layout.positions.flatten())
    assert torch.equal(links[0], layout.retrieve_index)
    assert torch.equal(links[1], layout.retrieve_next_token)
    assert torch.equal(links[2], layout.retrieve_next_sibling)
    from sgl_kernel.speculative import reconstruct_indices_from_tree_mask

    again = torch.empty((3, 3, n), dtype=torch.int64)
    reconstruct_indices_from_tree_mask(mask, seq_lens, positions, *again, 3, n)
    assert torch.equal(again, links)


@pytest.mark.parametrize(("n", "steps"), [(1, 1), (4, 3), (8, 4), (16, 6), (32, 8)])
def test_verify_tree_greedy_matches_reference(sk: ModuleType, n: int, steps: int) -> None:
    rng = random.Random(n * 7 + steps)
    gen = torch.Generator().manual_seed(n)
    bs = 4
    layout = tree_layout(random_parents(rng, bs, n), torch.zeros(bs, dtype=torch.int64))
    tokens = torch.randint(0, 3, (bs, n), generator=gen)  # a small vocabulary: many matches
    target = torch.randint(0, 3, (bs, n), generator=gen)
    want = reference_verify(tokens, layout, target, steps)
    predicts = torch.zeros(bs * n, dtype=torch.int32)
    accept_index = torch.full((bs, steps), -1, dtype=torch.int32)
    accept_num = torch.empty(bs, dtype=torch.int32)
    sk.verify_tree_greedy_cpu(  # keyword names as SGLang's verify_tree_greedy_func passes them
        predicts=predicts, accept_index=accept_index, accept_token_num=accept_num,
        candidates=tokens, retrive_index=layout.retrieve_index,
        retrive_next_token=layout.retrieve_next_token,
        retrive_next_sibling=layout.retrieve_next_sibling, target_predict=target)
    assert torch.equal(predicts, want.predicts)
    assert torch.equal(accept_index, want.accept_index)
    assert torch.equal(accept_num, want.accept_length)


# ---------------------------------------------------------------------------------------------
# Attention.

HEADS, KV_HEADS, HEAD_DIM = 6, 2, 32  # GQA: 3 query heads per kv head


def kv_pool(gen: torch.Generator, rows: int, row_len: int, v_dim: int = HEAD_DIM,
            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """K/V buffers and a request-to-token map of disjoint random slots (8 slots unused)."""
    slots = rows * row_len + 8
    rtt = torch.randperm(slots, generator=gen)[: rows * row_len].view(rows, row_len)
    return {
        "k": torch.randn(slots, KV_HEADS, HEAD_DIM, generator=gen).to(dtype),
        "v": torch.randn(slots, KV_HEADS, v_dim, generator=gen).to(dtype),
        "rtt": rtt.int(),
    }


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                        scale: float, cap: float = 0.0,
                        sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q [M, H, D], k/v [N, Hkv, *], allowed [M, N] -> [M, H, Dv]: the contract written out one
    query and one head at a time in float64 (query head h reads kv head h // (H // Hkv))."""
    m, h, _ = q.shape
    group = h // k.shape[1]
    out = torch.zeros(m, h, v.shape[2])
    for i in range(m):
        keys = allowed[i].nonzero().flatten()
        for head in range(h):
            s = (k[keys, head // group].double() @ q[i, head].double()) * scale
            if cap > 0:
                s = cap * torch.tanh(s / cap)
            e = torch.exp(s - s.max())
            denominator = e.sum() + (torch.exp(sinks[head].double() - s.max()) if sinks is not None
                                     else 0.0)
            out[i, head] = ((e / denominator) @ v[keys, head // group].double()).float()
    return out


def decode_call(q: torch.Tensor, pool: dict[str, torch.Tensor], out: torch.Tensor,
                key: torch.Tensor | None, value: torch.Tensor | None, loc: torch.Tensor,
                rpi: torch.Tensor, seq_lens: torch.Tensor, scale: float, cap: float = 0.0,
                window: int = 0, sinks: torch.Tensor | None = None) -> None:
    """Positional arguments exactly as ``IntelAMXAttnBackend.forward_decode`` passes them."""
    attn_logits = torch.zeros(q.shape[0], q.shape[1], 8, out.shape[2] + 1)
    ops.decode_attention_cpu(q, pool["k"], pool["v"], 1.0, 1.0, out, key, value, loc,
                             attn_logits, pool["rtt"], rpi, seq_lens, scale, cap, False,
                             window, None, sinks)


def test_decode_attention_gqa_and_cache_write(sk: ModuleType) -> None:
    gen = torch.Generator().manual_seed(10)
    pool = kv_pool(gen, 5, 20, v_dim=16)
    rpi, seq_lens = torch.tensor([3, 0, 4]), torch.tensor([5, 1, 17])
    loc = pool["rtt"][rpi, seq_lens - 1].long()  # the current token's slot
    q = torch.randn(3, HEADS, HEAD_DIM, generator=gen)
    key = torch.randn(3, KV_HEADS, HEAD_DIM, generator=gen)
    value = torch.randn(3, KV_HEADS, 16, generator=gen)
    out = torch.empty(3, HEADS, 16)
    decode_call(q, pool, out, key, value, loc, rpi, seq_lens, 0.125)
    assert torch.equal(pool["k"][loc], key) and torch.equal(pool["v"][loc], value)
    for b in range(3):
        slots = pool["rtt"][int(rpi[b]), : int(seq_lens[b])].long()
        want = reference_attention(q[b : b + 1], pool["k"][slots], pool["v"][slots],
                    torch.ones(1, slots.numel(), dtype=torch.bool), 0.125)
        torch.testing.assert_close(out[b : b + 1], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cap", [0.0, 30.0])  # the fused path and the written-out one
def test_decode_attention_empty_sequence_reads_nothing(sk: ModuleType, cap: float) -> None:
    gen = torch.Generator().manual_seed(13)
    pool = kv_pool(gen, 2, 8)
    rpi, seq_lens = torch.tensor([0, 1]), torch.tensor([0, 3])
    q = torch.randn(2, HEADS, HEAD_DIM, generator=gen)
    out = torch.full((2, HEADS, HEAD_DIM), float("nan"))
    decode_call(q, pool, out, None, None, torch.zeros(2, dtype=torch.int64), rpi, seq_lens, 0.1,
                cap=cap)
    assert out[0].eq(0).all()
    slots = pool["rtt"][1, :3].long()
    want = reference_attention(q[1:], pool["k"][slots], pool["v"][slots],
                               torch.ones(1, 3, dtype=torch.bool), 0.1, cap)
    torch.testing.assert_close(out[1:], want, rtol=1e-5, atol=1e-5)


def test_decode_attention_window_softcap_sinks(sk: ModuleType) -> None:
    gen = torch.Generator().manual_seed(11)
    pool = kv_pool(gen, 3, 30)
    rpi, seq_lens, window = torch.tensor([2, 0]), torch.tensor([30, 4]), 9
    q = torch.randn(2, HEADS, HEAD_DIM, generator=gen) * 3
    sinks = torch.randn(HEADS, generator=gen)
    out = torch.empty(2, HEADS, HEAD_DIM)
    decode_call(q, pool, out, None, None, torch.zeros(2, dtype=torch.int64), rpi, seq_lens,
                0.3, cap=5.0, window=window, sinks=sinks)
    for b in range(2):
        length = int(seq_lens[b])
        slots = pool["rtt"][int(rpi[b]), :length].long()
        allowed = (length - 1 - torch.arange(length) < window).unsqueeze(0)
        want = reference_attention(q[b : b + 1], pool["k"][slots], pool["v"][slots], allowed,
                                   0.3, 5.0, sinks)
        torch.testing.assert_close(out[b : b + 1], want, rtol=1e-5, atol=1e-5)


def test_decode_attention_bfloat16(sk: ModuleType) -> None:
    gen = torch.Generator().manual_seed(12)
    pool = kv_pool(gen, 2, 12, dtype=torch.bfloat16)
    rpi, seq_lens = torch.tensor([1, 0]), torch.tensor([12, 7])
    q = torch.randn(2, HEADS, HEAD_DIM, generator=gen).bfloat16()
    out = torch.empty(2, HEADS, HEAD_DIM, dtype=torch.bfloat16)
    decode_call(q, pool, out, None, None, torch.zeros(2, dtype=torch.int64), rpi, seq_lens, 0.2)
    for b in range(2):
        slots = pool["rtt"][int(rpi[b]), : int(seq_lens[b])].long()
        want = reference_attention(q[b : b + 1], pool["k"][slots], pool["v"][slots],
                    torch.ones(1, slots.numel(), dtype=torch.bool), 0.2)
        torch.testing.assert_close(out[b : b + 1].float(), want, rtol=2e-2, atol=2e-2)


def extend_call(q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None,
                out: torch.Tensor, pool: dict[str, torch.Tensor], rpi: torch.Tensor,
                seq_lens: torch.Tensor, ext_lens: torch.Tensor, scale: float,
                tree: torch.Tensor | None = None, is_causal: bool = True,
                window: int = 0) -> None:
    """Positional arguments exactly as ``IntelAMXAttnBackend.forward_extend`` passes them."""
    starts = (torch.cumsum(ext_lens, 0) - ext_lens).int()
    ops.extend_attention_cpu(q, k, v, out, pool["k"], pool["v"], 1.0, 1.0, pool["rtt"], rpi,
                             seq_lens, ext_lens.int(), starts, int(ext_lens.max()), scale, 0.0,
                             False, window, None, None, tree, is_causal)


def extend_inputs(gen: torch.Generator, pool: dict[str, torch.Tensor], rpi: torch.Tensor,
                  prefix: list[int], new: list[int]) -> tuple[torch.Tensor, ...]:
    """q/k/v of the new tokens; their K/V also written to the cache after the prefix (as
    SGLang's backend does before the call)."""
    total = sum(new)
    q = torch.randn(total, HEADS, HEAD_DIM, generator=gen)
    k = torch.randn(total, KV_HEADS, HEAD_DIM, generator=gen)
    v = torch.randn(total, KV_HEADS, pool["v"].shape[2], generator=gen)
    start = 0
    for b, (p, e) in enumerate(zip(prefix, new, strict=True)):
        slots = pool["rtt"][int(rpi[b]), p : p + e].long()
        pool["k"][slots], pool["v"][slots] = k[start : start + e], v[start : start + e]
        start += e
    return q, k, v


@pytest.mark.parametrize("kv_from_cache", [False, True])
def test_extend_attention_prefix_and_causal(sk: ModuleType, kv_from_cache: bool) -> None:
    gen = torch.Generator().manual_seed(20)
    pool = kv_pool(gen, 6, 60, v_dim=16)
    rpi, prefix, new = torch.tensor([5, 1, 3, 0]), [0, 13, 7, 30], [9, 1, 0, 17]
    q, k, v = extend_inputs(gen, pool, rpi, prefix, new)
    seq_lens = torch.tensor(prefix) + torch.tensor(new)
    out = torch.full((sum(new), HEADS, 16), float("nan"))
    extend_call(q, None if kv_from_cache else k, None if kv_from_cache else v, out, pool, rpi,
                seq_lens, torch.tensor(new), 0.17)
    start = 0
    for b, (p, e) in enumerate(zip(prefix, new, strict=True)):
        if e == 0:
            continue
        slots = pool["rtt"][int(rpi[b]), : p + e].long()
        allowed = torch.arange(p + e) <= (p + torch.arange(e)).unsqueeze(1)
        want = reference_attention(q[start : start + e],
                                   pool["k"][slots], pool["v"][slots], allowed, 0.17)
        torch.testing.assert_close(out[start : start + e], want, rtol=1e-5, atol=1e-5)
        start += e


def test_extend_attention_tree_mask(sk: ModuleType) -> None:
    """TARGET_VERIFY: every request extends by n draft tokens that see the whole prefix and,
    among themselves, only their ancestors (QLEN_ONLY mask)."""
    gen = torch.Generator().manual_seed(21)
    n, prefix = 8, [11, 3, 25]
    pool = kv_pool(gen, 4, 40)
    rpi = torch.tensor([2, 0, 3])
    q, k, v = extend_inputs(gen, pool, rpi, prefix, [n] * 3)
    seq_lens = torch.tensor(prefix) + n
    ancestors = tree_layout(random_parents(random.Random(21), 3, n), torch.tensor(prefix)).ancestors
    mask = tree_mask(ancestors, torch.tensor(prefix), TreeMaskMode.QLEN_ONLY)
    out = torch.empty(3 * n, HEADS, HEAD_DIM)
    extend_call(q, k, v, out, pool, rpi, seq_lens, torch.tensor([n] * 3), 0.2, tree=mask)
    for b, p in enumerate(prefix):
        slots = pool["rtt"][int(rpi[b]), : p + n].long()
        allowed = torch.cat([torch.ones(n, p, dtype=torch.bool), ancestors[b]], dim=1)
        want = reference_attention(q[b * n : (b + 1) * n],
                                   pool["k"][slots], pool["v"][slots], allowed, 0.2)
        torch.testing.assert_close(out[b * n : (b + 1) * n], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="tree_mask must have"):
        extend_call(q, k, v, out, pool, rpi, seq_lens, torch.tensor([n] * 3), 0.2,
                    tree=mask[:-1])


def test_extend_attention_not_causal_and_window(sk: ModuleType) -> None:
    gen = torch.Generator().manual_seed(22)
    pool = kv_pool(gen, 2, 40)
    rpi, prefix, new = torch.tensor([1, 0]), [6, 0], [5, 12]
    q, k, v = extend_inputs(gen, pool, rpi, prefix, new)
    seq_lens = torch.tensor(prefix) + torch.tensor(new)
    for is_causal, window in [(False, 0), (True, 4)]:
        out = torch.empty(sum(new), HEADS, HEAD_DIM)
        extend_call(q, k, v, out, pool, rpi, seq_lens, torch.tensor(new), 0.25,
                    is_causal=is_causal, window=window)
        start = 0
        for b, (p, e) in enumerate(zip(prefix, new, strict=True)):
            slots = pool["rtt"][int(rpi[b]), : p + e].long()
            behind = (p + torch.arange(e)).unsqueeze(1) - torch.arange(p + e)
            allowed = behind >= 0 if is_causal else torch.ones(e, p + e, dtype=torch.bool)
            if window:
                allowed &= behind < window
            want = reference_attention(q[start : start + e],
                                       pool["k"][slots], pool["v"][slots], allowed, 0.25)
            torch.testing.assert_close(out[start : start + e], want, rtol=1e-5, atol=1e-5)
            start += e


# ---------------------------------------------------------------------------------------------
# Seeded-sampling hash and thread binding.


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Textbook MurmurHash3_x86_32 of a multiple of 4 bytes."""
    h = seed
    for (k,) in struct.iter_unpack("<I", data):
        k = (k * 0xCC9E2D51) & 0xFFFFFFFF
        k = ((k << 15) | (k >> 17)) & 0xFFFFFFFF
        k = (k * 0x1B873593) & 0xFFFFFFFF
        h ^= k
        h = ((h << 13) | (h >> 19)) & 0xFFFFFFFF
        h = (h * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_murmur_hash32(sk: ModuleType) -> None:
    seeds = [0, 1, 2**32 + 5, 2**64 - 1, 123456789012345]
    positions = [0, 7, 2**32 + 3, 99, 1]
    columns = [0, 1, 2**31, 2**32 - 1, 50_000]
    got = ops.murmur_hash32_cpu(torch.tensor(seeds, dtype=torch.uint64),
                                torch.tensor(positions, dtype=torch.uint64),
                                torch.tensor(columns, dtype=torch.int64))
    assert got.dtype == torch.uint32 and got.shape == (5, 5)
    want = [[murmur3_x86_32(struct.pack("<QII", s, p & 0xFFFFFFFF, c)) for c in columns]
            for s, p in zip(seeds, positions, strict=True)]
    assert got.to(torch.int64).tolist() == want
    # SGLang calls it inside the torch.compile'd multinomial_with_seed: shapes without data
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = ops.murmur_hash32_cpu(torch.empty(3, dtype=torch.uint64),
                                     torch.empty(3, dtype=torch.int64), torch.empty(11))
    assert fake.shape == (3, 11) and fake.dtype == torch.uint32


def test_init_cpu_threads_env(sk: ModuleType) -> None:
    from sgl_kernel.threads import parse_cpu_ids

    assert parse_cpu_ids("0-3,8,10-11") == [0, 1, 2, 3, 8, 10, 11]
    with pytest.raises(ValueError, match="SGLANG_CPU_OMP_THREADS_BIND"):
        ops.init_cpu_threads_env("0-x")
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    cpus, threads = sorted(os.sched_getaffinity(0)), torch.get_num_threads()
    try:  # bind to what this process already has: nothing changes for other tests
        report = ops.init_cpu_threads_env(",".join(map(str, cpus)))
        assert torch.get_num_threads() == len(cpus)
        assert sorted(os.sched_getaffinity(0)) == cpus
        assert f"{len(cpus)} threads" in report
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# SGLang's Triton kernels under the Triton interpreter (one subprocess: SGLANG_USE_CPU_ENGINE=1,
# TRITON_INTERPRET=1, the stand-in on sys.path), each against SGLang's CPU-branch wrapper of the
# same op, which calls the stand-in with SGLang's own argument conventions. A case builds its
# inputs from its own seed, so both runs see the same inputs, and returns what the op wrote.

Outputs = list[torch.Tensor]


def _case_build_tree(triton: bool, mode: TreeMaskMode, malformed: bool) -> Outputs:
    from sglang.kernels.ops.speculative import spec_tree

    rng = random.Random(f"build_tree {int(mode)} {malformed}")
    topk, depth, n, bs = 4, 4, 10, 3
    drafts = [eagle_draft(rng, topk, depth, n, malformed=malformed and b == 1) for b in range(bs)]
    seq_lens = torch.tensor([5, 9, 2])
    size = bs * n * n + (int(seq_lens.sum()) * n if mode == TreeMaskMode.FULL_MASK else 0)
    mask, positions = torch.ones(size, dtype=torch.bool), torch.empty(bs * n, dtype=torch.int64)
    links = torch.full((3, bs, n), -1, dtype=torch.int64)
    build = (spec_tree.sgl_build_tree_kernel_triton if triton
             else spec_tree.build_tree_kernel_efficient_func)
    build(torch.tensor([d[0] for d in drafts]), torch.tensor([d[1] for d in drafts]), seq_lens,
          mask, positions, *links, topk, depth, n, mode)  # mode as SGLang passes it: an IntEnum
    return [mask, positions, links]


def _case_verify_tree_greedy(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import spec_tree

    rng, gen = random.Random("verify"), torch.Generator().manual_seed(4)
    bs, n, steps = 4, 12, 5
    layout = tree_layout(random_parents(rng, bs, n), torch.zeros(bs, dtype=torch.int64))
    tokens = torch.randint(0, 3, (bs, n), generator=gen)
    target = torch.randint(0, 3, (bs, n), generator=gen)
    out = [torch.zeros(bs * n, dtype=torch.int32), torch.full((bs, steps), -1, dtype=torch.int32),
           torch.zeros(bs, dtype=torch.int32)]
    verify = spec_tree.verify_tree_greedy_triton if triton else spec_tree.verify_tree_greedy_func
    verify(*out, tokens, layout.retrieve_index, layout.retrieve_next_token,
           layout.retrieve_next_sibling, target)
    return out


def _case_reconstruct_indices(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import reconstruct_tree

    bs, n, seq_lens = 3, 9, torch.tensor([4, 0, 6])
    layout = tree_layout(random_parents(random.Random("reconstruct"), bs, n), seq_lens)
    mask = tree_mask(layout.ancestors, seq_lens, TreeMaskMode.QLEN_ONLY)
    positions, links = torch.empty(bs * n, dtype=torch.int64), torch.empty(3, bs * n,
                                                                          dtype=torch.int64)
    run = (reconstruct_tree.reconstruct_indices_from_tree_mask_triton if triton  # else via
           else reconstruct_tree.reconstruct_indices_from_tree_mask_func)  # sgl_kernel.speculative
    run(mask, seq_lens, positions, *links, bs, n)
    return [positions, links]


def _case_copy_all_layer_kv_cache(triton: bool) -> Outputs:
    from sglang.kernels.ops.kvcache import cache_move

    gen = torch.Generator().manual_seed(6)
    buffers = [torch.randn(16, 2, 8, generator=gen) for _ in range(4)]
    tgt, src = torch.tensor([3, 4, 15, 0]), torch.tensor([2, 3, 4, 3])
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in buffers])
    if triton:
        cache_move.copy_all_layer_kv_cache_tiled[(len(buffers), 1)](
            ptrs, strides, tgt, src, tgt.numel(), 4, BYTES_PER_TILE=64)
    else:
        cache_move.copy_all_layer_kv_cache_func(ptrs, strides, tgt, src, tgt.numel(), 4, {})
    return buffers


def _case_murmur_hash32(triton: bool) -> Outputs:
    from sglang.kernels.ops.sampling import murmur_hash

    gen = torch.Generator().manual_seed(7)
    seed = torch.randint(0, 2**62, (4,), generator=gen).to(torch.uint64)
    positions, cols = torch.randint(0, 5000, (4,), generator=gen), torch.arange(37)
    if triton:
        out = torch.empty(4, 37, dtype=torch.uint32)
        murmur_hash.murmur_hash32_kernel[(4, 1)](seed, positions, cols, out, 4, 37, BLOCK_SIZE=64)
    else:
        out = murmur_hash.murmur_hash32(seed, positions, cols)  # a CPU tensor -> the stand-in
    return [out.to(torch.int64)]


def _case_assign_req_to_token_pool(triton: bool) -> Outputs:
    from sglang.srt.mem_cache import allocation

    p = ragged_pool(random.Random("req_to_token"), 4, 48)
    rtt = p["req_to_token"].clone()
    locs = torch.arange(int((p["end"] - p["start"]).sum())) + 500
    if triton:
        allocation.assign_req_to_token_pool[(4,)](p["req_pool_indices"], rtt, p["start"],
                                                  p["end"], locs, 48, 4)
    else:
        allocation.assign_req_to_token_pool_func(p["req_pool_indices"], rtt, p["start"], p["end"],
                                                 locs, 4)
    return [rtt]


def _case_assign_extend_cache_locs(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import cache_locs

    p = ragged_pool(random.Random("extend_locs"), 4, 48)
    total = int((p["end"] - p["start"]).sum())
    if triton:
        out = torch.empty(total, dtype=torch.int64)
        cache_locs.assign_extend_cache_locs[(4,)](p["req_pool_indices"], p["req_to_token"],
                                                  p["start"], p["end"], out, 48, 4)
        return [out]
    out = cache_locs.assign_extend_cache_locs_func(  # sized bs * widest range
        req_pool_indices=p["req_pool_indices"], req_to_token=p["req_to_token"],
        start_offset=p["start"], end_offset=p["end"], batch_size=4,
        draft_token_num=int((p["end"] - p["start"]).max()), device="cpu")
    return [out[:total]]


def _case_assign_draft_cache_locs_contiguous(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import cache_locs

    p = ragged_pool(random.Random("draft_locs"), 4, 48)
    out = torch.empty(4 * 2 * 3, dtype=torch.int64)
    if triton:
        cache_locs.assign_draft_cache_locs_contiguous[(4,)](
            p["req_pool_indices"], p["req_to_token"], p["start"], out, 48, 2, 3)
    else:
        cache_locs.assign_draft_cache_locs_contiguous_func(
            p["req_pool_indices"], p["req_to_token"], p["start"], out, 2, 3)
    return [out]


def _case_fill_bonus_tokens(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import eagle

    tokens = torch.randint(0, 999, (3, 4), dtype=torch.int32,
                           generator=torch.Generator().manual_seed(5))
    lens = (accept_indices(random.Random("bonus"), 3, 4, 5) != -1).sum(1).int()
    bonus = torch.empty(3, dtype=torch.int32)
    if triton:
        eagle.fill_bonus_tokens[(3,)](tokens, lens, bonus, 4)
    else:
        eagle.fill_bonus_tokens_func(tokens, lens, bonus, 4, 3)
    return [bonus]


def _case_fill_accept_out_cache_loc(triton: bool) -> Outputs:
    from sglang.kernels.ops.speculative import eagle

    accept = accept_indices(random.Random("accept_locs"), 3, 4, 5).flatten()
    locs, out = torch.arange(15) * 3 + 1, torch.full((12,), -1, dtype=torch.int64)
    if triton:
        eagle.fill_accept_out_cache_loc[(12,)](accept, locs, out, 16)
    else:
        eagle.fill_accept_out_cache_loc_func(accept, locs, out, 12)
    return [out]


def _case_rotate_input_ids(triton: bool, with_select: bool) -> Outputs:
    from sglang.kernels.ops.speculative import multi_layer_eagle

    ids = torch.arange(40) + 1000
    starts, lens = torch.tensor([0, 6, 6, 20]), torch.tensor([6, 0, 9, 4])
    new = torch.tensor([-1, -2, -3, -4])
    select = torch.tensor([2, 7, 11, 23]) if with_select else None
    if triton:
        multi_layer_eagle.rotate_input_ids_kernel[(4,)](ids, starts, lens, new, select,
                                                        BLOCK_SIZE=8)
    else:
        multi_layer_eagle.rotate_input_ids(ids, starts, lens, new, select)
    return [ids]


TRITON_CASES: dict[str, Callable[[bool], Outputs]] = {
    "build_tree_qlen": lambda t: _case_build_tree(t, TreeMaskMode.QLEN_ONLY, False),
    "build_tree_full": lambda t: _case_build_tree(t, TreeMaskMode.FULL_MASK, False),
    "build_tree_malformed": lambda t: _case_build_tree(t, TreeMaskMode.QLEN_ONLY, True),
    "verify_tree_greedy": _case_verify_tree_greedy,
    "reconstruct_indices": _case_reconstruct_indices,
    "copy_all_layer_kv_cache": _case_copy_all_layer_kv_cache,
    "murmur_hash32": _case_murmur_hash32,
    "assign_req_to_token_pool": _case_assign_req_to_token_pool,
    "assign_extend_cache_locs": _case_assign_extend_cache_locs,
    "assign_draft_cache_locs_contiguous": _case_assign_draft_cache_locs_contiguous,
    "fill_bonus_tokens": _case_fill_bonus_tokens,
    "fill_accept_out_cache_loc": _case_fill_accept_out_cache_loc,
    "rotate_input_ids": lambda t: _case_rotate_input_ids(t, False),
    "rotate_input_ids_select": lambda t: _case_rotate_input_ids(t, True),
}


SGLANG_CPU_BRANCH_MODULES = [  # each looks up stand-in names at import time when is_cpu()
    "sglang.kernels.ops.kvcache.cache_move",
    "sglang.srt.mem_cache.allocation",
    "sglang.kernels.ops.speculative.cache_locs",
    "sglang.kernels.ops.speculative.eagle",
    "sglang.kernels.ops.speculative.spec_tree",
    "sglang.kernels.ops.speculative.multi_layer_eagle",
    "sglang.kernels.ops.speculative.reconstruct_tree",
    "sglang.srt.layers.attention.intel_amx_backend",
    "sglang.srt.layers.attention.linear.gdn_backend",
    "sglang.srt.layers.attention.linear.kda_backend",
]


def _run_triton_cases(path: str) -> None:
    """Subprocess entry: the import errors of SGLang's CPU-branch modules (key "imports") and
    every case's (Triton, stand-in) outputs, or its error, saved to ``path``."""
    import sgl_kernel
    from sglang.srt.utils.common import cpu_has_amx_support, is_cpu

    assert sgl_kernel.STAND_IN and is_cpu() and not cpu_has_amx_support()
    results: dict[str, Any] = {"imports": []}
    for module in SGLANG_CPU_BRANCH_MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:
            results["imports"].append(f"{module}: {type(err).__name__}: {err}")
    for name, case in TRITON_CASES.items():
        try:
            results[name] = (case(True), case(False))
        except Exception as err:  # reported per case by the test
            results[name] = f"{type(err).__name__}: {err}"
    torch.save(results, path)


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for package in ("triton", "sglang"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    path = tmp_path_factory.mktemp("stand_in") / "triton.pt"
    env = {**os.environ, "SGLANG_USE_CPU_ENGINE": "1", "TRITON_INTERPRET": "1",
           "PYTHONPATH": os.pathsep.join([str(STAND_IN_DIR), str(REPO)]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    code = f"import tests.test_cpu_stand_in as t; t._run_triton_cases({str(path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(path, weights_only=False)


def _assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), f"{where}: stand-in {got.tolist()} != triton {want.tolist()}"
    else:
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")


@pytest.mark.slow
def test_sglang_cpu_branch_modules_import(triton_results: dict[str, Any]) -> None:
    """With is_cpu() true and AMX support false, every SGLang module that imports stand-in names
    at import time imports."""
    assert triton_results["imports"] == []


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_matches_sglang_triton_kernel(triton_results: dict[str, Any], case: str) -> None:
    result = triton_results[case]
    assert not isinstance(result, str), result
    triton_out, stand_in_out = result
    _assert_same(stand_in_out, triton_out, case)
