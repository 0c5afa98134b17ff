"""A pure-PyTorch stand-in for sgl-kernel's CPU build, as far as SGLang 0.5.23 serves a plain
decoder (Llama-like) model on CPU with ``--attention-backend intel_amx``, plain or speculative
(EAGLE / EAGLE3 / NGRAM / GRAFT).

Importing it registers the ``torch.ops.sgl_kernel`` ops the CPU path calls (attention, KV-cache
and request-to-token bookkeeping, the speculative tree, seeded-sampling hash, thread binding) and
binds the ``*_cpu`` Python names SGLang imports to them. It has no ``convert_weight_packed``, so
SGLang's ``cpu_has_amx_support()`` stays False and every layer runs its ``forward_native`` path.

Only ``graft_sglang.cpu.launch_server`` puts its parent directory on the path, and only when no
real ``sgl_kernel`` imports, so it never shadows one. ``STAND_IN`` tells the two apart.
"""

from __future__ import annotations

import torch

from . import attention, cache_locs, kv_copy, mamba, sampling, speculative, threads, tokens, tree

STAND_IN = True
__version__ = "0.0.0+graft-stand-in"

_ops = torch.ops.sgl_kernel

# The Python-level names SGLang imports; the op packets take the schemas' argument names as
# keywords too (verify_tree_greedy_cpu is called with retrive_index=... and so on).
assign_req_to_token_pool_cpu = _ops.assign_req_to_token_pool_cpu
assign_extend_cache_locs_cpu = _ops.assign_extend_cache_locs_cpu
assign_draft_cache_locs_contiguous_cpu = _ops.assign_draft_cache_locs_contiguous_cpu
build_draft_decode_metadata_cpu = _ops.build_draft_decode_metadata_cpu
fill_accept_out_cache_loc_cpu = _ops.fill_accept_out_cache_loc_cpu
copy_all_layer_kv_cache_cpu = _ops.copy_all_layer_kv_cache_cpu
build_tree_kernel_efficient_cpu = _ops.build_tree_kernel_efficient_cpu
verify_tree_greedy_cpu = _ops.verify_tree_greedy_cpu
reconstruct_indices_from_tree_mask_cpu = _ops.reconstruct_indices_from_tree_mask_cpu
fill_bonus_tokens_cpu = _ops.fill_bonus_tokens_cpu
rotate_input_ids_cpu = _ops.rotate_input_ids_cpu

__all__ = [
    "STAND_IN",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "attention",
    "build_draft_decode_metadata_cpu",
    "build_tree_kernel_efficient_cpu",
    "cache_locs",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "kv_copy",
    "mamba",
    "reconstruct_indices_from_tree_mask_cpu",
    "rotate_input_ids_cpu",
    "sampling",
    "speculative",
    "threads",
    "tokens",
    "tree",
    "verify_tree_greedy_cpu",
]
