"""``sgl_kernel.speculative``: the name SGLang's NGRAM path imports from here on CPU.

``kernels/ops/speculative/reconstruct_tree.py`` imports the CUDA op's name,
``reconstruct_indices_from_tree_mask``, on every device but CUDA/ROCm/XPU; on CPU it is the same
operation as ``reconstruct_indices_from_tree_mask_cpu`` (contract in
``tree.reconstruct_indices_from_tree_mask``), bound here under that name.
"""

from __future__ import annotations

import torch

from . import tree  # noqa: F401  (registers reconstruct_indices_from_tree_mask_cpu)

reconstruct_indices_from_tree_mask = torch.ops.sgl_kernel.reconstruct_indices_from_tree_mask_cpu
