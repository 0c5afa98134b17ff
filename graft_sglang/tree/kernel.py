"""The compiled Graft tree build (``kernels/``): same results as ``build_graft_tree``.

``build_graft_tree_compiled`` runs the whole build in one C++/CUDA call, from the draft candidates
and retrieved slots to the layout and the mask: on CUDA tensors the GPU kernel (one block per
request), on CPU tensors the same source compiled with g++ (the host's sequential prune /
graft / select, or with ``gpu_statements`` the GPU's own statements). Extensions are JIT-built on
first use (``torch.utils.cpp_extension``, cached under ``~/.cache/torch_extensions``). If a
build is impossible (no compiler, no nvcc, no GPU) ``load_extension`` raises
``KernelUnavailable`` and ``build_graft_tree_fast`` logs that and uses the PyTorch reference.
With ``mask_mode`` the same launch also writes SGLang's attention mask (``tree_mask``'s layout),
into a caller's buffer (``mask_out``) when given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import torch

from graft_sglang.tree.builder import (
    GraftConfig,
    GraftTree,
    _validate,
    build_graft_tree,
)
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.layout import (
    TreeLayout,
    TreeMaskMode,
    mask_buffer_bytes,
    packed_row_bytes,
    tree_mask,
)
from graft_sglang.tree.retrieved import RetrievedCandidates

logger = logging.getLogger(__name__)
# The top-level kernels/ (a link in the checkout, a copy in the wheel).
KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernel_sources"
_loaded: dict[str, ModuleType] = {}
_warned: set[str] = set()


class KernelUnavailable(RuntimeError):
    """The compiled Graft kernels cannot be built or run here."""


def load_extension(device_type: str) -> ModuleType:
    """JIT-build (once per process, cached on disk) the extension for ``cpu`` or ``cuda``."""
    if device_type in _loaded:
        return _loaded[device_type]
    if device_type not in ("cpu", "cuda"):
        raise KernelUnavailable(f"no Graft kernel for device type {device_type!r}")
    if not (KERNEL_DIR / "graft_tree.cuh").is_file():
        raise KernelUnavailable(f"kernel sources not found in {KERNEL_DIR}")
    from torch.utils import cpp_extension

    sources = [str(KERNEL_DIR / "graft_tree_binding.cpp")]
    kwargs: dict = {"extra_cflags": ["-O2"], "extra_include_paths": [str(KERNEL_DIR)]}
    if device_type == "cuda":
        if not torch.cuda.is_available() or cpp_extension.CUDA_HOME is None:
            raise KernelUnavailable("the CUDA kernel needs a GPU and nvcc (CUDA_HOME)")
        sources.append(str(KERNEL_DIR / "graft_tree_cuda.cu"))
        kwargs["extra_cflags"] = ["-O2", "-DGRAFT_WITH_CUDA"]
        kwargs["extra_cuda_cflags"] = ["-O3"]
    try:
        module = cpp_extension.load(name=f"graft_tree_{device_type}", sources=sources,
                                    verbose=False, **kwargs)
    except (OSError, RuntimeError, ImportError) as exc:
        raise KernelUnavailable(f"building the {device_type} Graft kernel failed: {exc}") from exc
    _loaded[device_type] = module
    return module


def build_graft_tree_compiled(
    root_tokens: torch.Tensor, seq_lens: torch.Tensor, draft: DraftCandidates,
    retrieved: RetrievedCandidates, config: GraftConfig,
    mask_mode: TreeMaskMode | int | None = None, seq_lens_sum: int | None = None, *,
    draft_quotas: torch.Tensor | None = None, mask_out: torch.Tensor | None = None,
    gpu_statements: bool = False,
) -> tuple[GraftTree, torch.Tensor | None]:
    """``build_graft_tree`` (and ``tree_mask`` for ``mask_mode``) through the compiled kernel.

    draft_quotas: [bs] int64 per-request draft quotas (``build_graft_tree``'s), or None.
    mask_out: a preallocated buffer for the mask (``layout.mask_buffer_bytes``: any contiguous
        tensor on the inputs' device, e.g. SGLang's verify-mask buffer); the kernel writes the
        mask's bytes at its head and nothing past them. ValueError if it is too small.
    seq_lens_sum: the host's sum(seq_lens), as SGLang keeps it. Only a FULL_MASK reads it: to
        size a fresh mask (without it, and without ``mask_out``, ``seq_lens.sum()`` is read on
        the host) or to check ``mask_out``'s size. Each request's FULL_MASK offset comes from
        ``seq_lens`` on the device; a ``mask_out`` too small for an unknown sum is cut at its end
        (checked on the host instead when ``config.check_inputs`` is on).
    gpu_statements: on CPU tensors, run the GPU kernel's statements on one thread (how a machine
        without a GPU tests them), not the host's sequential build; same results.
    Returns (tree, mask): mask is ``mask_out`` when given, else ``tree_mask(tree.layout.ancestors,
    seq_lens, mask_mode)`` as uint8 (bool modes hold 0/1); None without ``mask_mode``. With
    ``config.check_inputs`` off nothing is read on the host but that unsized FULL_MASK's sum.
    Raises ``KernelUnavailable`` where the kernel cannot be built.
    """
    _validate(root_tokens, seq_lens, draft, retrieved, config, draft_quotas)
    bs, n = root_tokens.shape[0], config.budget
    mode = -1 if mask_mode is None else int(TreeMaskMode(mask_mode))
    if mode == TreeMaskMode.QLEN_ONLY_BITPACKING:
        packed_row_bytes(n)  # ValueError past N = 32
    device = root_tokens.device
    if mask_out is not None:
        if mask_mode is None:
            raise ValueError("mask_out needs a mask_mode (TreeMaskMode)")
        if mask_out.device != device:
            raise ValueError(f"mask_out is on {mask_out.device}, the inputs on {device}")
        mask_buffer_bytes(mask_out, mode, bs, n, seq_lens, seq_lens_sum, config.check_inputs)
    elif mode == TreeMaskMode.FULL_MASK and seq_lens_sum is None:
        seq_lens_sum = int(seq_lens.sum())  # the size of a fresh mask depends on it
    ext = load_extension(device.type)

    def arg(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).contiguous()  # no copy when already so

    quotas = None if draft_quotas is None else arg(draft_quotas, torch.int64)
    out = ext.build_tree(
        arg(draft.tokens, torch.int64), arg(draft.parents, torch.int64),
        arg(draft.scores, torch.float32), arg(retrieved.tokens, torch.int64),
        arg(retrieved.parents, torch.int64), arg(retrieved.anchors, torch.int64),
        arg(retrieved.path_probs, torch.float32),
        arg(retrieved.valid, torch.bool).view(torch.uint8), config.retrieval_weight,
        arg(root_tokens, torch.int64), arg(seq_lens, torch.int64), n,
        -1.0 if config.threshold is None else config.threshold,
        -1.0 if config.relative is None else config.relative,
        -1 if config.draft_quota is None else config.draft_quota, quotas, config.top_up_pruned,
        mode, -1 if seq_lens_sum is None else seq_lens_sum, mask_out, not gpu_statements,
    )
    tokens, parents, scores, source, anc, depth, positions, ridx, nxt, sib, mask = out
    tree = GraftTree(tokens, parents, scores, source,
                     TreeLayout(anc, depth, positions, ridx, nxt, sib))
    if mask_mode is None:
        return tree, None
    return tree, (mask_out if mask_out is not None else mask)


def build_graft_tree_fast(
    root_tokens: torch.Tensor, seq_lens: torch.Tensor, draft: DraftCandidates,
    retrieved: RetrievedCandidates, config: GraftConfig,
    mask_mode: TreeMaskMode | int | None = None, seq_lens_sum: int | None = None, *,
    draft_quotas: torch.Tensor | None = None, mask_out: torch.Tensor | None = None,
) -> tuple[GraftTree, torch.Tensor | None]:
    """``build_graft_tree_compiled``'s contract through the faster of kernel and reference.

    The compiled kernel wherever it builds: on CUDA tensors the GPU kernel; on CPU tensors the
    host's sequential build, which ``bench.kernels --device cpu`` measures faster than the
    reference at every shape it records (``bench/results/kernels-cpu.json``, the contract this
    choice rests on). Otherwise (no compiler, no nvcc) the PyTorch reference, logged once per
    device type; it writes the same mask (``tree_mask``, into ``mask_out`` when given) and reads
    nothing on the host with ``config.check_inputs`` off, except a FULL_MASK's sum(seq_lens)
    when ``seq_lens_sum`` is None.
    """
    try:
        return build_graft_tree_compiled(root_tokens, seq_lens, draft, retrieved, config,
                                         mask_mode, seq_lens_sum, draft_quotas=draft_quotas,
                                         mask_out=mask_out)
    except KernelUnavailable as exc:
        kind = root_tokens.device.type
        if kind not in _warned:
            _warned.add(kind)
            logger.warning("Graft kernel unavailable on %s (%s); using the PyTorch reference",
                           kind, exc)
    tree = build_graft_tree(root_tokens, seq_lens, draft, retrieved, config, draft_quotas)
    if mask_mode is None:
        return tree, None
    mask = tree_mask(tree.layout.ancestors, seq_lens, mask_mode, out=mask_out,
                     seq_lens_sum=seq_lens_sum)
    return tree, (mask if mask_out is not None else mask.to(torch.uint8))
