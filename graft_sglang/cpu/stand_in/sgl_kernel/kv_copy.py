"""Slot-row copies inside every layer's K and V buffer (``copy_all_layer_kv_cache_cpu``).

SGLang's KV pools pass the buffers as a table of raw base addresses (``data_ptrs``) and row
widths in bytes (``strides``), the layout its Triton kernel reads. Semantics of sgl-kernel's
CPU ``kvcache.cpp``: for every buffer, ``buf[tgt_loc[i], :] = buf[src_loc[i], :]``, all sources
read before any target is written (safe for overlapping locations).
"""

from __future__ import annotations

import ctypes

import torch

from ._registry import register


def _byte_rows(address: int, rows: int, width: int) -> torch.Tensor:
    """A [rows, width] uint8 tensor aliasing the memory at ``address`` (no copy)."""
    raw = (ctypes.c_uint8 * (rows * width)).from_address(address)
    return torch.frombuffer(raw, dtype=torch.uint8).view(rows, width)


def copy_all_layer_kv_cache(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """For each buffer b (base address ``data_ptrs[b]``, ``strides[b]`` bytes per slot row):
    copy rows ``src_loc`` to rows ``tgt_loc``.

    data_ptrs: [num_buffers] uint64; strides: [num_buffers] int64 bytes; tgt_loc, src_loc:
    [num_locs] slot indices. The buffers must hold at least ``max(tgt_loc, src_loc) + 1`` rows
    (as for the real kernel, nothing can check that from raw addresses). Raises ValueError for
    negative or mismatched locations. Cost O(num_buffers * num_locs * row bytes).
    """
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError(f"tgt_loc has {tgt_loc.numel()} entries, src_loc {src_loc.numel()}")
    if data_ptrs.numel() != strides.numel():
        raise ValueError(f"data_ptrs has {data_ptrs.numel()} entries, strides {strides.numel()}")
    if data_ptrs.numel() == 0 or tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64)
    src = src_loc.to(torch.int64)
    if int(torch.minimum(tgt.min(), src.min())) < 0:
        raise ValueError("copy_all_layer_kv_cache_cpu: negative slot location")
    rows = int(torch.maximum(tgt.max(), src.max())) + 1
    for address, width in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        buffer = _byte_rows(address, rows, width)
        buffer[tgt] = buffer[src]  # the gather copies first: overlap-safe


register(
    "copy_all_layer_kv_cache_cpu(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, "
    "Tensor src_loc) -> ()",
    copy_all_layer_kv_cache,
)
