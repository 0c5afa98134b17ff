"""The compiled Graft tree kernel (kernels/) equals the PyTorch reference.

On this CPU machine: the kernel source compiled with g++ (both the host's sequential build and
the same statements the GPU runs) is compared with the reference on random inputs, per-request
quotas and masks written into preallocated buffers included, and the CUDA source must compile
for sm_90 with nvcc. With value checks off, neither the fast build nor the reference reads a
tensor on the host. On a GPU: the CUDA build is compared too, and SGLang's own verify kernels
are run on grafted trees against the reference verification."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graft_sglang.tree.builder import GraftConfig, GraftTree, NodeSource, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.kernel import (
    KERNEL_DIR,
    KernelUnavailable,
    build_graft_tree_compiled,
    build_graft_tree_fast,
    load_extension,
)
from graft_sglang.tree.layout import TreeMaskMode, tree_mask, tree_mask_bytes
from graft_sglang.tree.retrieved import RetrievedCandidates
from tests.host_reads import HostReads, OnDevice, on_device
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


RETRIEVED_FIELDS = ("tokens", "parents", "anchors", "path_probs", "valid")


def moved(draft: DraftCandidates, retrieved: RetrievedCandidates,
          device: torch.device | str) -> tuple[DraftCandidates, RetrievedCandidates]:
    return (DraftCandidates(draft.tokens.to(device), draft.parents.to(device),
                            draft.scores.to(device)),
            RetrievedCandidates(*(getattr(retrieved, f).to(device) for f in RETRIEVED_FIELDS)))


def builds(device: torch.device) -> list[bool]:
    """``gpu_statements`` values that differ on ``device`` (CPU: sequential and GPU's)."""
    return [False, True] if device.type == "cpu" else [False]


def assert_same_tree_and_masks(roots: torch.Tensor, lens: torch.Tensor, draft, retrieved,
                               config: GraftConfig,
                               draft_quotas: torch.Tensor | None = None) -> None:
    """Kernel vs reference on whatever device the inputs live on (reference runs on the CPU):
    the tree, and every mask mode both fresh and written into a larger preallocated buffer
    (whose bytes past the mask stay as they were)."""
    cpu_draft, cpu_retrieved = moved(draft, retrieved, "cpu")
    quotas_cpu = None if draft_quotas is None else draft_quotas.cpu()
    want = build_graft_tree(roots.cpu(), lens.cpu(), cpu_draft, cpu_retrieved, config, quotas_cpu)
    bs, n = roots.shape[0], config.budget
    for gpu_statements in builds(roots.device):
        for mode in mask_modes(n):
            got, mask = build_graft_tree_compiled(roots, lens, draft, retrieved, config, mode,
                                                  draft_quotas=draft_quotas,
                                                  gpu_statements=gpu_statements)
            assert_same_tree(want, got)
            want_mask = tree_mask(want.layout.ancestors, lens.cpu(), mode).view(torch.uint8)
            assert torch.equal(mask.cpu(), want_mask), mode.name
            size = tree_mask_bytes(mode, bs, n, int(lens.sum()))
            buffer = torch.full((size + 37,), 0xA5, dtype=torch.uint8, device=roots.device)
            _, written = build_graft_tree_compiled(roots, lens, draft, retrieved, config, mode,
                                                   draft_quotas=draft_quotas, mask_out=buffer,
                                                   gpu_statements=gpu_statements)
            assert written is buffer
            assert torch.equal(buffer[:size].cpu(), want_mask), mode.name
            assert bool((buffer[size:] == 0xA5).all()), mode.name


def quota_inputs(seed: int, bs: int, n: int, topk: int, depth: int = 4,
                 device: torch.device | str = "cpu"):
    """Random step inputs with random per-request quotas over [0, M + 5] (0 and > M included)."""
    gen = torch.Generator().manual_seed(seed)
    draft = eagle_draft(gen, bs, topk, depth, 200)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 200, n)
    roots = torch.randint(0, 200, (bs,), generator=gen)
    lens = torch.randint(0, 500, (bs,), generator=gen)
    m = draft.num_candidates
    quotas = torch.randint(0, m + 6, (bs,), generator=gen)
    quotas[0] = 0
    if bs > 1:
        quotas[1] = m + 5
    draft, retrieved = moved(draft, retrieved, device)
    return roots.to(device), lens.to(device), draft, retrieved, quotas.to(device)


@pytest.fixture(scope="module")
def cpu_kernel() -> None:
    try:
        load_extension("cpu")
    except KernelUnavailable as exc:  # no C++ compiler on this machine
        pytest.skip(str(exc))


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(step_inputs(), st.data())
def test_cpu_build_equals_reference(cpu_kernel: None, inputs, data: st.DataObject) -> None:
    """Both host builds equal the reference, with and without per-request quotas, and the
    reference with value checks off (no early exits) builds the same tree as with them."""
    roots, seq_lens, draft, retrieved, config = inputs
    bs, m = roots.shape[0], draft.num_candidates
    quotas = data.draw(st.one_of(st.none(), st.lists(st.integers(0, m + 3), min_size=bs,
                                                     max_size=bs)))
    quotas = None if quotas is None else torch.tensor(quotas, dtype=torch.int64)
    want = build_graft_tree(roots, seq_lens, draft, retrieved, config, quotas)
    unchecked = dataclasses.replace(config, check_inputs=False)
    assert_same_tree(want, build_graft_tree(roots, seq_lens, draft, retrieved, unchecked, quotas))
    for gpu_statements in (False, True):
        got, mask = build_graft_tree_compiled(roots, seq_lens, draft, retrieved, unchecked,
                                              draft_quotas=quotas, gpu_statements=gpu_statements)
        assert mask is None
        assert_same_tree(want, got)


@pytest.mark.slow
@pytest.mark.parametrize(("bs", "n", "topk"), [(1, 8, 2), (4, 16, 4), (16, 64, 8), (64, 32, 4),
                                               (8, 128, 8)])
def test_cpu_build_equals_reference_at_scale(cpu_kernel: None, bs: int, n: int,
                                             topk: int) -> None:
    roots, lens, draft, retrieved, quotas = quota_inputs(bs * n + topk, bs, n, topk)
    for config in (GraftConfig(budget=n, threshold=None),
                   GraftConfig(budget=n, threshold=0.05, draft_quota=n // 2),
                   GraftConfig(budget=n, relative=0.1, top_up_pruned=False, check_inputs=False)):
        assert_same_tree_and_masks(roots, lens, draft, retrieved, config)
        assert_same_tree_and_masks(roots, lens, draft, retrieved, config, quotas)


@pytest.mark.parametrize(("bs", "n", "topk"), [(3, 8, 2), (6, 32, 4), (5, 64, 8)])
def test_per_request_quotas(cpu_kernel: None, bs: int, n: int, topk: int) -> None:
    """Each request keeps exactly its own quota of draft nodes: quota 0 keeps none (without top
    up no draft node enters the tree), a quota past M keeps all; kernel = reference."""
    roots, lens, draft, retrieved, quotas = quota_inputs(bs + n, bs, n, topk)
    config = GraftConfig(budget=n, threshold=None, top_up_pruned=False)
    want = build_graft_tree(roots, lens, draft, retrieved, config, quotas)
    for gpu_statements in (False, True):
        got, _ = build_graft_tree_compiled(roots, lens, draft, retrieved, config,
                                           draft_quotas=quotas, gpu_statements=gpu_statements)
        assert_same_tree(want, got)
    from_draft = (want.source & NodeSource.DRAFT) > 0
    assert not bool(from_draft[0].any())  # quota 0
    kept = from_draft.sum(dim=1)
    assert bool((kept <= quotas).all())
    # A quota past M keeps the whole draft: the tree is the one without any quota.
    whole = build_graft_tree(roots, lens, draft, retrieved, config)
    assert torch.equal(want.tokens[1], whole.tokens[1])
    assert not torch.equal(want.tokens[0], whole.tokens[0])


def test_bad_quotas(cpu_kernel: None) -> None:
    """A quota tensor of the wrong shape is refused always, a negative quota with the checks."""
    roots, lens, draft, retrieved, quotas = quota_inputs(2, 3, 8, 2)
    config = GraftConfig(budget=8)
    for build in (build_graft_tree, build_graft_tree_compiled):
        with pytest.raises(ValueError, match="draft_quotas must be \\[bs\\]"):
            build(roots, lens, draft, retrieved, dataclasses.replace(config, check_inputs=False),
                  draft_quotas=quotas[:2])
        with pytest.raises(ValueError, match="draft_quotas must be >= 0"):
            build(roots, lens, draft, retrieved, config, draft_quotas=quotas - 100)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int16, torch.int32], ids=str)
@pytest.mark.parametrize("n", [8, 16, 32])
def test_masks_into_preallocated_buffers(cpu_kernel: None, n: int, dtype: torch.dtype) -> None:
    """Every mask mode into a buffer of any 1/2/4-byte dtype (SGLang's bool masks, its
    uint8/16/32 bit-packed rows), bigger than needed: the mask's bytes at its head, the rest
    untouched; the same from the reference's ``tree_mask(out=...)`` and from the fast path."""
    bs = 5
    roots, lens, draft, retrieved, quotas = quota_inputs(n, bs, n, 4)
    config = GraftConfig(budget=n, check_inputs=False)
    want = build_graft_tree(roots, lens, draft, retrieved, config, quotas)
    for mode in mask_modes(n):
        want_mask = tree_mask(want.layout.ancestors, lens, mode).view(torch.uint8)
        size = want_mask.numel()
        item = torch.empty(0, dtype=dtype).element_size()
        fill = {torch.bool: True}.get(dtype, 0x5A)
        for seq_lens_sum in (None, int(lens.sum())):
            for build in ("sequential", "gpu", "fast", "reference"):
                buffer = torch.full((size // item + 9,), fill, dtype=dtype)
                before = buffer.clone()
                if build == "reference":
                    written = tree_mask(want.layout.ancestors, lens, mode, out=buffer,
                                        seq_lens_sum=seq_lens_sum)
                else:
                    run = build_graft_tree_fast if build == "fast" else build_graft_tree_compiled
                    extra = {} if build == "fast" else {"gpu_statements": build == "gpu"}
                    _, written = run(roots, lens, draft, retrieved, config, mode, seq_lens_sum,
                                     draft_quotas=quotas, mask_out=buffer, **extra)
                assert written is buffer, build
                raw, old = buffer.view(torch.uint8), before.view(torch.uint8)
                assert torch.equal(raw[:size], want_mask), (mode.name, build)
                assert torch.equal(raw[size:], old[size:]), (mode.name, build)


def test_mask_buffer_too_small(cpu_kernel: None) -> None:
    """A buffer that cannot hold the mask is refused when its size is known on the host; a
    FULL_MASK of unknown size (checks off: seq_lens not read) is cut at the buffer's end, so no
    byte past the buffer is ever written."""
    bs, n = 4, 16
    roots, lens, draft, retrieved, _ = quota_inputs(7, bs, n, 4)
    config = GraftConfig(budget=n, check_inputs=False)
    want = build_graft_tree(roots, lens, draft, retrieved, config)
    for mode in TreeMaskMode:
        small = torch.zeros(tree_mask_bytes(mode, bs, n, int(lens.sum())) - 1, dtype=torch.bool)
        with pytest.raises(ValueError, match="mask_out"):
            build_graft_tree_compiled(roots, lens, draft, retrieved, config, mode,
                                      int(lens.sum()), mask_out=small)
        with pytest.raises(ValueError, match="mask_out"):
            tree_mask(want.layout.ancestors, lens, mode, out=small)
    size = tree_mask_bytes(TreeMaskMode.FULL_MASK, bs, n, int(lens.sum()))
    want_mask = tree_mask(want.layout.ancestors, lens, TreeMaskMode.FULL_MASK).view(torch.uint8)
    for gpu_statements in (False, True):
        storage = torch.full((size,), 7, dtype=torch.uint8)
        cut = size - 1000
        build_graft_tree_compiled(roots, lens, draft, retrieved, config, TreeMaskMode.FULL_MASK,
                                  mask_out=storage[:cut], gpu_statements=gpu_statements)
        assert torch.equal(storage[:cut], want_mask[:cut])
        assert bool((storage[cut:] == 7).all())
    with pytest.raises(ValueError, match="mask_out"):  # with the checks on, sum(seq_lens) is read
        build_graft_tree_compiled(roots, lens, draft, retrieved,
                                  dataclasses.replace(config, check_inputs=True),
                                  TreeMaskMode.FULL_MASK, mask_out=storage[:cut])
    with pytest.raises(ValueError, match="mask_mode"):
        build_graft_tree_compiled(roots, lens, draft, retrieved, config, None,
                                  mask_out=storage)


@pytest.mark.parametrize("mode", list(TreeMaskMode), ids=[m.name for m in TreeMaskMode])
def test_no_host_reads_with_checks_off(cpu_kernel: None, mode: TreeMaskMode) -> None:
    """With value checks off, a whole ``build_graft_tree_fast`` step (per-request quotas, the
    mask written into the backend's buffer; FULL_MASK without the host's seq_lens_sum) and the
    reference ``build_graft_tree`` + ``tree_mask`` (QLEN modes, or FULL_MASK given
    seq_lens_sum) read nothing on the host: no scalar read, no copy of an input off the
    "device". With the checks on, the same calls do read (the counters can fail)."""
    bs, n = 64, 32
    roots, lens, draft, retrieved, quotas = quota_inputs(3, bs, n, 4, depth=5)
    size = tree_mask_bytes(mode, bs, n, int(lens.sum()))
    config = GraftConfig(budget=n, threshold=0.02, vocab_size=200)
    d_draft, d_retrieved = (DraftCandidates(*(on_device(getattr(draft, f)) for f in
                                              ("tokens", "parents", "scores"))),
                            RetrievedCandidates(*(on_device(getattr(retrieved, f)) for f in
                                                  RETRIEVED_FIELDS)))
    d_roots, d_lens, d_quotas = on_device(roots), on_device(lens), on_device(quotas)
    seq_lens_sum = int(lens.sum()) if mode == TreeMaskMode.FULL_MASK else None
    for check, fast_reads in ((False, 0), (True, None)):
        cfg = dataclasses.replace(config, check_inputs=check)
        buffer = on_device(torch.zeros(size + 64, dtype=torch.bool))
        OnDevice.to_host.clear()
        with HostReads() as host:
            tree, mask = build_graft_tree_fast(d_roots, d_lens, d_draft, d_retrieved, cfg, mode,
                                               draft_quotas=d_quotas, mask_out=buffer)
            fast = len(host.reads) + len(OnDevice.to_host)
            ref = build_graft_tree(d_roots, d_lens, d_draft, d_retrieved, cfg, d_quotas)
            tree_mask(ref.layout.ancestors, d_lens, mode, out=buffer, seq_lens_sum=seq_lens_sum)
        reads = len(host.reads) + len(OnDevice.to_host)
        if fast_reads is None:
            assert fast > 0 and reads > fast
        else:
            assert (fast, reads) == (0, 0), (host.reads, OnDevice.to_host)
        assert mask is buffer
        assert_same_tree(tree, ref)
        want = tree_mask(ref.layout.ancestors.as_subclass(torch.Tensor), lens, mode)
        assert torch.equal(buffer.as_subclass(torch.Tensor).view(torch.uint8)[:size],
                           want.view(torch.uint8))


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
    moved_draft, moved_ret = moved(draft, retrieved, cuda)
    quotas = torch.randint(0, draft.num_candidates + 6, (bs,), generator=gen)
    for q in (None, quotas.to(cuda)):
        assert_same_tree_and_masks(roots.to(cuda), lens.to(cuda), moved_draft, moved_ret, config,
                                   q)


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
