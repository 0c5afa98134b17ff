"""The compiled Graft tree kernel (kernels/) equals the PyTorch reference.

On this CPU machine: the kernel source compiled with g++ (the same statements the GPU runs) is
compared with the reference on random inputs, and the CUDA source must compile for sm_90 with
nvcc. On a GPU: the CUDA build is compared too, and SGLang's own verify kernels are run on
grafted trees against the reference verification."""

from __future__ import annotations

import logging
import shutil
import subprocess

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
from tests.random_inputs import eagle_draft, random_retrieved
from tests.test_builder_properties import step_inputs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_same_tree(a: GraftTree, b: GraftTree) -> None:
    for name in ("tokens", "parents", "scores", "source"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name
    for name in ("ancestors", "depth", "positions", "retrieve_index", "retrieve_next_token",
                 "retrieve_next_sibling"):
        assert torch.equal(getattr(a.layout, name).cpu(), getattr(b.layout, name).cpu()), name


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
    assert_same_tree(build_graft_tree(roots, seq_lens, draft, retrieved, config),
                     build_graft_tree_compiled(roots, seq_lens, draft, retrieved, config))


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
        assert_same_tree(build_graft_tree(roots, lens, draft, retrieved, config),
                         build_graft_tree_compiled(roots, lens, draft, retrieved, config))


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
        got = build_graft_tree_fast(roots, lens, draft, retrieved, config)
    assert "using the PyTorch reference" in caplog.text
    assert_same_tree(build_graft_tree(roots, lens, draft, retrieved, config), got)


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
    want = build_graft_tree(roots, lens, draft, retrieved, config)
    cuda = torch.device("cuda")
    moved_draft = type(draft)(draft.tokens.to(cuda), draft.parents.to(cuda),
                              draft.scores.to(cuda))
    moved_ret = type(retrieved)(*(getattr(retrieved, f).to(cuda) for f in
                                  ("tokens", "parents", "anchors", "path_probs", "valid")))
    got = build_graft_tree_compiled(roots.to(cuda), lens.to(cuda), moved_draft, moved_ret,
                                    config)
    assert_same_tree(want, got)


@needs_cuda
@pytest.mark.parametrize("n", [8, 32, 64])
def test_sglang_verify_kernels_on_grafted_trees(n: int) -> None:
    """SGLang's greedy verify kernel consumes our layout unchanged: same accepted paths as the
    reference verification (so no second copy of the verify kernels is written)."""
    tree_ops = pytest.importorskip("sglang.kernels.ops.speculative.tree")
    from graft_sglang.verify import verify_tree_greedy

    gen = torch.Generator().manual_seed(n)
    bs = 8
    draft = eagle_draft(gen, bs, 4, 4, 50)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 50, n)
    tree = build_graft_tree(torch.randint(0, 50, (bs,), generator=gen), torch.full((bs,), 10),
                            draft, retrieved, GraftConfig(budget=n, threshold=0.05))
    target = torch.randint(0, 50, (bs, n), generator=gen)
    want = verify_tree_greedy(tree.tokens, tree.layout, target, n)
    cuda = torch.device("cuda")
    predicts = torch.zeros(bs * n, dtype=torch.int32, device=cuda)
    accept_index = torch.full((bs, n), -1, dtype=torch.int32, device=cuda)
    accept_num = torch.zeros(bs, dtype=torch.int32, device=cuda)
    lay = tree.layout
    tree_ops.verify_tree_greedy(predicts, accept_index, accept_num, tree.tokens.to(cuda),
                                lay.retrieve_index.to(cuda), lay.retrieve_next_token.to(cuda),
                                lay.retrieve_next_sibling.to(cuda), target.to(cuda))
    assert torch.equal(accept_num.cpu(), want.accept_length)
    assert torch.equal(accept_index.cpu(), want.accept_index)
