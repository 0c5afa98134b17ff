"""The compiled Graft tree kernel (kernels/) equals the PyTorch reference.

On this CPU machine: the kernel source compiled with g++ (the same statements the GPU runs) is
compared with the reference on random inputs, and the CUDA source must compile for sm_90 with
nvcc. On a GPU: the CUDA build is compared too, and SGLang's own verify kernels are run on
grafted trees against the reference verification."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from graft_sglang.tree.builder import GraftConfig, GraftTree, build_graft_tree
from graft_sglang.tree.kernel import (
    KERNEL_DIR,
    KernelUnavailable,
    build_graft_tree_compiled,
    build_graft_tree_fast,
    load_extension,
)
from graft_sglang.tree.layout import TreeMaskMode, tree_mask
from tests.random_inputs import eagle_draft, random_retrieved
from tests.test_builder_properties import step_inputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_same_tree(a: GraftTree, b: GraftTree) -> None:
    for name in ("tokens", "parents", "scores", "source"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name
    for name in ("ancestors", "depth", "positions", "retrieve_index", "retrieve_next_token",
                 "retrieve_next_sibling"):
        assert torch.equal(getattr(a.layout, name).cpu(), getattr(b.layout, name).cpu()), name


def mask_modes(n: int) -> list[TreeMaskMode]:
    """The mask modes SGLang allows at budget n (bit packing holds at most 32 columns)."""
    return [m for m in TreeMaskMode if m != TreeMaskMode.QLEN_ONLY_BITPACKING or n <= 32]


def assert_same_tree_and_masks(roots: torch.Tensor, lens: torch.Tensor, draft, retrieved,
                               config: GraftConfig) -> None:
    """Kernel vs reference on whatever device the inputs live on (reference runs on the CPU)."""
    cpu = [x.cpu() for x in (draft.tokens, draft.parents, draft.scores)]
    want = build_graft_tree(roots.cpu(), lens.cpu(), type(draft)(*cpu),
                            type(retrieved)(*(getattr(retrieved, f).cpu() for f in
                                              ("tokens", "parents", "anchors", "path_probs",
                                               "valid"))), config)
    for mode in mask_modes(config.budget):
        got, mask = build_graft_tree_compiled(roots, lens, draft, retrieved, config, mode)
        assert_same_tree(want, got)
        want_mask = tree_mask(want.layout.ancestors, lens.cpu(), mode).to(torch.uint8)
        assert torch.equal(mask.cpu(), want_mask), mode.name


@pytest.fixture(scope="module")
def cpu_kernel() -> None:
    try:
        load_extension("cpu")
    except KernelUnavailable as exc:  # no C++ compiler on this machine
        pytest.skip(str(exc))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(step_inputs())
def test_cpu_build_equals_reference(cpu_kernel: None, inputs) -> None:
    roots, seq_lens, draft, retrieved, config = inputs
    got, mask = build_graft_tree_compiled(roots, seq_lens, draft, retrieved, config)
    assert mask is None
    assert_same_tree(build_graft_tree(roots, seq_lens, draft, retrieved, config), got)


@pytest.mark.slow
@pytest.mark.parametrize(("bs", "n", "topk"), [(1, 8, 2), (4, 16, 4), (16, 64, 8), (64, 32, 4)])
def test_cpu_build_equals_reference_at_scale(cpu_kernel: None, bs: int, n: int,
                                             topk: int) -> None:
    gen = torch.Generator().manual_seed(bs * n + topk)
    draft = eagle_draft(gen, bs, topk, 4, 1000)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 1000, n)
    for config in (GraftConfig(budget=n, threshold=None),
                   GraftConfig(budget=n, threshold=0.05, draft_quota=n // 2),
                   GraftConfig(budget=n, relative=0.1, top_up_pruned=False)):
        roots = torch.randint(0, 1000, (bs,), generator=gen)
        lens = torch.randint(1, 3000, (bs,), generator=gen)
        assert_same_tree_and_masks(roots, lens, draft, retrieved, config)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_source_compiles_for_sm90(tmp_path) -> None:
    out = tmp_path / "graft_tree_cuda.o"
    proc = subprocess.run(
        ["nvcc", "-arch=sm_90", "-O3", "-c", str(KERNEL_DIR / "graft_tree_cuda.cu"),
         "-o", str(out)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_fallback_to_reference_is_logged(caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """Without kernel sources (or compiler, or GPU) the reference runs and a log line says so."""
    from graft_sglang.tree import kernel

    monkeypatch.setattr(kernel, "KERNEL_DIR", tmp_path)
    monkeypatch.setattr(kernel, "_loaded", {})
    monkeypatch.setattr(kernel, "_warned", set())
    gen = torch.Generator().manual_seed(0)
    draft = eagle_draft(gen, 2, 2, 3, 10)
    retrieved = random_retrieved(gen, 2, draft.num_candidates, 10, 4)
    roots, lens, config = torch.tensor([1, 2]), torch.tensor([3, 4]), GraftConfig(budget=6)
    with pytest.raises(KernelUnavailable, match="not found"):
        load_extension("cpu")
    with pytest.raises(KernelUnavailable, match="no Graft kernel"):
        load_extension("mps")
    with caplog.at_level(logging.WARNING, logger="graft_sglang.tree.kernel"):
        got, mask = build_graft_tree_fast(roots, lens, draft, retrieved, config,
                                          TreeMaskMode.QLEN_ONLY)
    assert "using the PyTorch reference" in caplog.text
    want = build_graft_tree(roots, lens, draft, retrieved, config)
    assert_same_tree(want, got)
    assert torch.equal(mask, want.layout.ancestors.reshape(-1).to(torch.uint8))


def test_bad_mask_arguments(cpu_kernel: None) -> None:
    gen = torch.Generator().manual_seed(1)
    draft = eagle_draft(gen, 1, 2, 3, 10)
    retrieved = random_retrieved(gen, 1, draft.num_candidates, 10, 4)
    roots, lens = torch.tensor([1]), torch.tensor([3])
    with pytest.raises(ValueError, match="N <= 32"):
        build_graft_tree_compiled(roots, lens, draft, retrieved, GraftConfig(budget=33),
                                  TreeMaskMode.QLEN_ONLY_BITPACKING)
    with pytest.raises(ValueError, match="TreeMaskMode"):
        build_graft_tree_compiled(roots, lens, draft, retrieved, GraftConfig(budget=8), 7)


@needs_cuda
@pytest.mark.parametrize("bs", [1, 4, 16, 64])
@pytest.mark.parametrize("n", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("topk", [2, 4, 8])
@pytest.mark.parametrize("grafted", [False, True])
def test_cuda_build_equals_reference(bs: int, n: int, topk: int, grafted: bool) -> None:
    gen = torch.Generator().manual_seed(bs * 1000 + n * 10 + topk)
    depth = max(2, (n // topk) + 1)
    draft = eagle_draft(gen, bs, topk, min(depth, 6), 32000)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 32000, n if grafted else 0)
    roots = torch.randint(0, 32000, (bs,), generator=gen)
    lens = torch.randint(1, 4000, (bs,), generator=gen)
    config = GraftConfig(budget=n, threshold=0.02)
    cuda = torch.device("cuda")
    moved_draft = type(draft)(draft.tokens.to(cuda), draft.parents.to(cuda),
                              draft.scores.to(cuda))
    moved_ret = type(retrieved)(*(getattr(retrieved, f).to(cuda) for f in
                                  ("tokens", "parents", "anchors", "path_probs", "valid")))
    assert_same_tree_and_masks(roots.to(cuda), lens.to(cuda), moved_draft, moved_ret, config)


def grafted_tree(n: int, bs: int, vocab: int, gen: torch.Generator) -> GraftTree:
    draft = eagle_draft(gen, bs, 4, 4, vocab)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, vocab, n)
    tree = build_graft_tree(torch.randint(0, vocab, (bs,), generator=gen),
                            torch.full((bs,), 10), draft, retrieved,
                            GraftConfig(budget=n, threshold=0.05))
    assert (tree.source & 2).any(), "the test trees must hold grafted nodes"
    return tree


def verify_tensors(tree: GraftTree) -> list[torch.Tensor]:
    """Outputs (predicts, accept_index, accept_num) and the tree inputs of SGLang's kernels."""
    bs, n = tree.tokens.shape
    cuda = torch.device("cuda")
    lay = tree.layout
    return [torch.zeros(bs * n, dtype=torch.int32, device=cuda),
            torch.full((bs, n), -1, dtype=torch.int32, device=cuda),
            torch.zeros(bs, dtype=torch.int32, device=cuda), tree.tokens.to(cuda),
            lay.retrieve_index.to(cuda), lay.retrieve_next_token.to(cuda),
            lay.retrieve_next_sibling.to(cuda)]


@needs_cuda
@pytest.mark.parametrize("n", [8, 32, 64])
def test_sglang_greedy_verify_kernel_on_grafted_trees(n: int) -> None:
    """SGLang's greedy verify kernel consumes our layout unchanged: same accepted paths and
    tokens as the reference verification (so no second copy of the verify kernel is written)."""
    tree_ops = pytest.importorskip("sglang.kernels.ops.speculative.tree")
    from graft_sglang.verify import verify_tree_greedy

    gen = torch.Generator().manual_seed(n)
    bs = 8
    tree = grafted_tree(n, bs, 50, gen)
    # The target mostly agrees with a child of each node, so paths of several nodes get accepted.
    nxt = tree.layout.retrieve_next_token.clamp(min=0)
    agree = torch.rand(bs, n, generator=gen) < 0.8
    target = torch.where(agree, torch.gather(tree.tokens, 1, nxt),
                         torch.randint(0, 50, (bs, n), generator=gen))
    want = verify_tree_greedy(tree.tokens, tree.layout, target, n)
    assert int(want.accept_length.max()) >= 2
    out = verify_tensors(tree)
    tree_ops.verify_tree_greedy(*out, target.to("cuda"))
    assert torch.equal(out[2].cpu(), want.accept_length)
    assert torch.equal(out[1].cpu(), want.accept_index)
    assert torch.equal(out[0].cpu(), want.predicts)


@needs_cuda
@pytest.mark.parametrize("n", [8, 32, 64])
def test_sglang_target_only_sampling_kernel_on_grafted_trees(n: int) -> None:
    """SGLang's target-only tree sampling kernel on our layout equals the reference on the same
    probabilities and coins."""
    sampling_ops = pytest.importorskip("sglang.kernels.ops.speculative.sampling")
    from graft_sglang.verify import target_probs, verify_tree_target_only

    gen = torch.Generator().manual_seed(100 + n)
    bs, vocab = 8, 64
    tree = grafted_tree(n, bs, vocab, gen)
    # Peaked logits on a child token make acceptance common without being certain.
    logits = torch.randn(bs, n, vocab, generator=gen)
    nxt = tree.layout.retrieve_next_token.clamp(min=0)
    logits.scatter_add_(2, torch.gather(tree.tokens, 1, nxt).unsqueeze(2),
                        torch.full((bs, n, 1), 3.0))
    probs = target_probs(logits, temperature=0.8, top_k=20)
    coins = torch.rand(bs, n, generator=gen)
    final = torch.rand(bs, generator=gen)
    want = verify_tree_target_only(tree.tokens, tree.layout, probs, coins, final, n)
    assert int(want.accept_length.max()) >= 2
    out = verify_tensors(tree)
    cuda_probs = probs.to("cuda")
    sampling_ops.tree_speculative_sampling_target_only(
        *out, coins.to("cuda"), final.to("cuda"), cuda_probs, torch.zeros_like(cuda_probs),
        deterministic=True)
    assert torch.equal(out[2].cpu(), want.accept_length)
    assert torch.equal(out[1].cpu(), want.accept_index)
    assert torch.equal(out[0].cpu(), want.predicts)


@pytest.mark.slow
def test_wheel_carries_kernel_sources_weights_and_entry_point(tmp_path) -> None:
    """``pip install graft-sglang`` users get the kernel sources (JIT build), the EAGLE-3 head
    and the SGLang plugin entry point."""
    root = Path(__file__).resolve().parents[1]
    leftovers = [p for p in (root / "build", root / "graft_sglang.egg-info") if not p.exists()]
    try:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path), str(root)],
                       check=True, cwd=tmp_path)
    finally:  # setuptools builds in the checkout: leave it as it was
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    (wheel,) = tmp_path.glob("graft_sglang-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in ("graft_tree.cuh", "graft_tree_binding.cpp", "graft_tree_cuda.cu"):
        assert f"graft_sglang/kernel_sources/{source}" in names
    head = "graft_sglang/eagle3/weights/smollm2-135m-instruct/"
    assert {head + "config.json", head + "model.safetensors"} <= names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[sglang.srt.plugins]" in text and "graft_sglang.plugin.registration:register" in text
