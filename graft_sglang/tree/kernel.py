"""The compiled Graft tree build (``kernels/``): same results as ``build_graft_tree``.

``build_graft_tree_compiled`` assembles the candidate pool with the reference's own tensor code
(``_candidate_pool``) and runs the rest in C++/CUDA: on CUDA tensors the GPU kernel (one block
per request), on CPU tensors the same source compiled with g++. Extensions are JIT-built on
first use (``torch.utils.cpp_extension``, cached under ``~/.cache/torch_extensions``). If a
build is impossible (no compiler, no nvcc, no GPU) ``load_extension`` raises
``KernelUnavailable`` and ``build_graft_tree_fast`` logs that and uses the PyTorch reference.
With ``mask_mode`` the same launch also writes SGLang's attention mask (``tree_mask``'s layout).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import torch

from graft_sglang.tree.builder import (
    GraftConfig,
    GraftTree,
    _candidate_pool,
    _validate,
    build_graft_tree,
)
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.layout import TreeLayout, TreeMaskMode, tree_mask
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
    mask_mode: TreeMaskMode | int | None = None, seq_lens_sum: int | None = None,
) -> tuple[GraftTree, torch.Tensor | None]:
    """``build_graft_tree`` (and ``tree_mask`` for ``mask_mode``) through the compiled kernel.

    Returns (tree, mask): mask is ``tree_mask(tree.layout.ancestors, seq_lens, mask_mode)`` as
    uint8 (bool modes hold 0/1), None without ``mask_mode``. ``seq_lens_sum`` (host int) sizes the
    FULL_MASK without a device sync; if None it is read from ``seq_lens``. Raises
    ``KernelUnavailable`` where the kernel cannot be built.
    """
    _validate(root_tokens, seq_lens, draft, retrieved, config)
    mode = -1 if mask_mode is None else int(TreeMaskMode(mask_mode))
    if mode == TreeMaskMode.QLEN_ONLY_BITPACKING and config.budget > 32:
        raise ValueError(f"QLEN_ONLY_BITPACKING supports N <= 32, got N = {config.budget}")
    if mode == TreeMaskMode.FULL_MASK and seq_lens_sum is None:
        seq_lens_sum = int(seq_lens.sum())
    device = root_tokens.device
    ext = load_extension(device.type)
    pool = _candidate_pool(draft, retrieved, config, device)
    out = ext.build_tree(
        pool.tokens.contiguous(), pool.parents.contiguous(), pool.scores.contiguous(),
        pool.valid.to(torch.uint8).contiguous(), root_tokens.to(torch.int64).contiguous(),
        seq_lens.to(device=device, dtype=torch.int64).contiguous(), draft.num_candidates,
        config.budget, -1.0 if config.threshold is None else config.threshold,
        -1.0 if config.relative is None else config.relative,
        -1 if config.draft_quota is None else config.draft_quota, config.top_up_pruned,
        mode, 0 if seq_lens_sum is None else seq_lens_sum,
    )
    tokens, parents, scores, source, anc, depth, positions, ridx, nxt, sib, mask = out
    tree = GraftTree(tokens, parents, scores, source,
                     TreeLayout(anc.bool(), depth, positions, ridx, nxt, sib))
    return tree, (None if mask_mode is None else mask)


def build_graft_tree_fast(
    root_tokens: torch.Tensor, seq_lens: torch.Tensor, draft: DraftCandidates,
    retrieved: RetrievedCandidates, config: GraftConfig,
    mask_mode: TreeMaskMode | int | None = None, seq_lens_sum: int | None = None,
) -> tuple[GraftTree, torch.Tensor | None]:
    """The compiled kernel where it can run, otherwise the PyTorch reference (logged once)."""
    try:
        return build_graft_tree_compiled(root_tokens, seq_lens, draft, retrieved, config,
                                         mask_mode, seq_lens_sum)
    except KernelUnavailable as exc:
        kind = root_tokens.device.type
        if kind not in _warned:
            _warned.add(kind)
            logger.warning("Graft kernel unavailable on %s (%s); using the PyTorch reference",
                           kind, exc)
    tree = build_graft_tree(root_tokens, seq_lens, draft, retrieved, config)
    if mask_mode is None:
        return tree, None
    return tree, tree_mask(tree.layout.ancestors, seq_lens, mask_mode).to(torch.uint8)
