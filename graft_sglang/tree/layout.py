"""Tree layout: from parent pointers to everything SGLang's verify path reads.

Given ``parents [bs, N]`` (node 0 = root, ``parents[b, i] < i``) this computes, batched and on the
tensors' device, the ancestor mask, depths, positions and the ``retrive_*`` links with the exact
semantics of SGLang's ``build_tree_kernel_efficient`` / ``reconstruct_indices_from_tree_mask``:

* ``retrieve_index[b, i] = b * N + i`` (a flat row of the verify logits);
* ``retrieve_next_token[b, p]`` = the smallest child index of node ``p`` (``-1`` for a leaf);
* ``retrieve_next_sibling[b, i]`` = the smallest ``k > i`` with the same parent (``-1`` if none);
* ``positions[b, i] = seq_lens[b] + depth(i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch


class TreeMaskMode(IntEnum):
    """SGLang's ``TreeMaskMode`` (``kernels/ops/speculative/spec_tree.py``)."""

    FULL_MASK = 0
    QLEN_ONLY = 1
    QLEN_ONLY_BITPACKING = 2


@dataclass(frozen=True)
class TreeLayout:
    """Derived layout of a batch of trees of exactly N nodes.

    ancestors:             [bs, N, N] bool, ``[b, i, j]`` = node j is an ancestor-or-self of i.
    depth:                 [bs, N] int64 (root 0).
    positions:             [bs, N] int64, ``seq_lens + depth``.
    retrieve_index:        [bs, N] int64.
    retrieve_next_token:   [bs, N] int64.
    retrieve_next_sibling: [bs, N] int64.
    """

    ancestors: torch.Tensor
    depth: torch.Tensor
    positions: torch.Tensor
    retrieve_index: torch.Tensor
    retrieve_next_token: torch.Tensor
    retrieve_next_sibling: torch.Tensor

    def truncated(self, n: int) -> TreeLayout:
        """The layout of the first ``n`` nodes (a prefix of a tree is a tree, since parents
        precede children): slices, with links past ``n`` cut. Both links are the smallest
        qualifying index, so one past ``n`` means none below ``n``."""
        bs = self.depth.shape[0]

        def cut(link: torch.Tensor) -> torch.Tensor:
            return torch.where(link < n, link, torch.full_like(link, -1))

        rows = torch.arange(bs, device=self.depth.device).unsqueeze(1) * n
        return TreeLayout(self.ancestors[:, :n, :n], self.depth[:, :n], self.positions[:, :n],
                          rows + torch.arange(n, device=self.depth.device),
                          cut(self.retrieve_next_token[:, :n]),
                          cut(self.retrieve_next_sibling[:, :n]))


def ancestor_mask(parents: torch.Tensor) -> torch.Tensor:
    """[bs, N] parents -> [bs, N, N] ancestor-or-self mask.

    Repeated squaring of the reachability matrix: after k squarings it covers paths of up to
    2^k edges, so log2(N) small batched matmuls suffice.
    """
    bs, n = parents.shape
    reach = torch.eye(n, device=parents.device).repeat(bs, 1, 1)
    own = torch.arange(n, device=parents.device).expand(bs, n)
    reach.scatter_(2, torch.where(parents >= 0, parents, own).unsqueeze(2), 1.0)
    span = 1
    while span < n - 1:
        reach = torch.bmm(reach, reach).clamp_(max=1.0)
        span *= 2
    return reach > 0


def tree_layout(parents: torch.Tensor, seq_lens: torch.Tensor) -> TreeLayout:
    """Compute the layout of trees given by ``parents [bs, N]`` after ``seq_lens [bs]`` tokens."""
    if parents.dim() != 2:
        raise ValueError(f"parents must be [bs, N], got shape {tuple(parents.shape)}")
    bs, n = parents.shape
    if seq_lens.shape != (bs,):
        raise ValueError(f"seq_lens must be [{bs}], got shape {tuple(seq_lens.shape)}")
    device = parents.device
    anc = ancestor_mask(parents)
    depth = anc.sum(dim=2, dtype=torch.int64) - 1
    positions = seq_lens.to(torch.int64).unsqueeze(1) + depth
    ar = torch.arange(n, device=device)
    retrieve_index = (torch.arange(bs, device=device).unsqueeze(1) * n + ar).to(torch.int64)
    # child_of[b, p, c] = c is a child of p.
    child_of = parents.unsqueeze(1) == ar.view(1, n, 1)
    big = torch.full((), n, dtype=torch.int64, device=device)
    cand = torch.where(child_of, ar.view(1, 1, n), big)
    first_child = cand.min(dim=2).values
    next_token = torch.where(first_child < n, first_child, torch.full_like(first_child, -1))
    # sibling[b, i, k] = k > i and same parent (the root has none).
    same_parent = (parents.unsqueeze(2) == parents.unsqueeze(1)) & (parents.unsqueeze(2) >= 0)
    later = ar.view(1, 1, n) > ar.view(1, n, 1)
    cand = torch.where(same_parent & later, ar.view(1, 1, n), big)
    first_sib = cand.min(dim=2).values
    next_sibling = torch.where(first_sib < n, first_sib, torch.full_like(first_sib, -1))
    return TreeLayout(anc, depth, positions, retrieve_index, next_token, next_sibling)


def packed_row_bytes(n: int) -> int:
    """Bytes per row of a QLEN_ONLY_BITPACKING mask of N = ``n`` columns (SGLang's uint8 /
    uint16 / uint32 rows); ValueError past 32."""
    if n > 32:
        raise ValueError(f"QLEN_ONLY_BITPACKING supports N <= 32, got N = {n}")
    return 4 if n > 16 else (2 if n > 8 else 1)


def tree_mask_bytes(mode: TreeMaskMode | int, bs: int, n: int, seq_lens_sum: int) -> int:
    """Bytes of ``tree_mask``'s output for ``bs`` trees of ``n`` nodes (``seq_lens_sum`` =
    sum(seq_lens), read by FULL_MASK only)."""
    mode = TreeMaskMode(mode)
    if mode == TreeMaskMode.FULL_MASK:
        return seq_lens_sum * n + bs * n * n
    if mode == TreeMaskMode.QLEN_ONLY:
        return bs * n * n
    return bs * n * packed_row_bytes(n)


def mask_buffer_bytes(out: torch.Tensor, mode: TreeMaskMode | int, bs: int, n: int,
                      seq_lens: torch.Tensor, seq_lens_sum: int | None, read: bool) -> int:
    """Check that the preallocated buffer ``out`` (any contiguous tensor: its bytes are the
    mask's, e.g. SGLang's bool or uint8/16/32 verify buffers) holds ``mode``'s mask and return
    its size in bytes. A FULL_MASK's size needs ``seq_lens_sum``; without it the check reads
    ``sum(seq_lens)`` on the host if ``read``, else it is skipped (the kernel writes nothing
    past the buffer). Raises ValueError naming the sizes."""
    if not out.is_contiguous():
        raise ValueError("the mask buffer (mask_out) must be contiguous")
    capacity = out.numel() * out.element_size()
    if TreeMaskMode(mode) == TreeMaskMode.FULL_MASK and seq_lens_sum is None:
        if not read:
            return capacity
        seq_lens_sum = int(seq_lens.sum())
    need = tree_mask_bytes(mode, bs, n, seq_lens_sum or 0)
    if need > capacity:
        raise ValueError(f"the {TreeMaskMode(mode).name} mask of {bs} trees of {n} nodes needs "
                         f"{need} bytes; the mask buffer (mask_out) holds {capacity}")
    return capacity


def tree_mask(
    ancestors: torch.Tensor, seq_lens: torch.Tensor, mode: TreeMaskMode | int, *,
    out: torch.Tensor | None = None, seq_lens_sum: int | None = None,
) -> torch.Tensor:
    """Flattened custom attention mask in SGLang's layout for ``mode``.

    FULL_MASK: per request ``[N, seq_len + N]`` row-major (prefix columns True), requests
        concatenated: ``[sum(seq_lens) * N + bs * N * N]`` bool.
    QLEN_ONLY: ``[bs * N * N]`` bool.
    QLEN_ONLY_BITPACKING: ``[bs * N * W]`` uint8, ``W`` = 1/2/4 bytes for N <= 8/16/32; bit j of a
        row (little endian) = node j is an ancestor-or-self of the row's node.

    out: a preallocated buffer (see ``mask_buffer_bytes``): the mask's bytes go to its head, the
        rest stays untouched, and ``out`` itself is returned. ValueError if it is too small.
    seq_lens_sum: the host's sum(seq_lens), if known. Only FULL_MASK reads it; without it the
        FULL_MASK reads ``seq_lens.sum()`` on the host (its size depends on it). Every other
        case reads nothing on the host. O(bytes of the mask).
    """
    bs, n, _ = ancestors.shape
    mode = TreeMaskMode(mode)
    if mode == TreeMaskMode.FULL_MASK and seq_lens_sum is None:
        seq_lens_sum = int(seq_lens.sum())
    size = tree_mask_bytes(mode, bs, n, seq_lens_sum or 0)
    if out is not None:
        mask_buffer_bytes(out, mode, bs, n, seq_lens, seq_lens_sum, read=False)
        head = out.view(-1).view(torch.uint8)[:size]
    if mode == TreeMaskMode.QLEN_ONLY:
        if out is None:
            return ancestors.reshape(-1).clone()
        head.copy_(ancestors.reshape(-1))
        return out
    if mode == TreeMaskMode.QLEN_ONLY_BITPACKING:
        width = packed_row_bytes(n)
        bits = torch.zeros(bs, n, width * 8, dtype=torch.uint8, device=ancestors.device)
        bits[:, :, :n] = ancestors.to(torch.uint8)
        weights = (2 ** torch.arange(8, device=ancestors.device)).to(torch.uint8)
        packed = (bits.view(bs, n, width, 8) * weights).sum(dim=3, dtype=torch.int64)
        if out is None:
            return packed.to(torch.uint8).reshape(-1)
        head.copy_(packed.reshape(-1))
        return out
    # FULL_MASK: all ones (the prefix columns), then each row's N tree columns scattered in.
    device = ancestors.device
    lens = seq_lens.to(device=device, dtype=torch.int64)
    row = lens + n
    start = torch.cumsum(n * row, dim=0) - n * row  # each request's first byte
    ar = torch.arange(n, device=device)
    cells = (start + lens)[:, None, None] + ar[None, :, None] * row[:, None, None] + ar
    if out is None:
        mask = torch.ones(size, dtype=torch.bool, device=device)
        mask[cells.reshape(-1)] = ancestors.reshape(-1)
        return mask
    head.fill_(1)
    head[cells.reshape(-1)] = ancestors.reshape(-1).to(torch.uint8)
    return out
