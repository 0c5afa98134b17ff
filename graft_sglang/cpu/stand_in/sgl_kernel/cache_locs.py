"""Reads and writes of the request-to-token map (``req_to_token [max_reqs, pool_len]`` int32, the
KV-cache slot of every token of every request) and of the cache-location vectors built from it.

Semantics of sgl-kernel's CPU ``spec.cpp``; every op is a vectorised gather or scatter over the
ragged ranges, O(bs + number of slots moved).
"""

from __future__ import annotations

import torch

from ._registry import register


def _ragged_slots(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The map entries ``req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]]`` of
    all requests in order, flattened: (row of each, column of each, total), [total] int64 each.

    Raises ValueError for a map that is not [max_reqs, pool_len], a range with end < start, or
    an ``out_cache_loc`` shorter than the total.
    """
    _check_pool(req_to_token, pool_len)
    start = start_offset.to(torch.int64)
    lengths = end_offset.to(torch.int64) - start
    if bool((lengths < 0).any()):
        raise ValueError(f"end_offset < start_offset for some request: lengths {lengths.tolist()}")
    total = int(lengths.sum())
    if total > out_cache_loc.numel():
        raise ValueError(
            f"out_cache_loc has {out_cache_loc.numel()} entries but the offsets need {total}"
        )
    request = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=start.device), lengths, output_size=total
    )
    first = torch.cumsum(lengths, 0) - lengths
    column = start[request] + torch.arange(total, device=start.device) - first[request]
    return req_pool_indices.to(torch.int64)[request], column, total


def _check_pool(req_to_token: torch.Tensor, pool_len: int) -> None:
    if req_to_token.dim() != 2 or req_to_token.shape[1] != pool_len:
        raise ValueError(
            f"req_to_token must be [max_reqs, pool_len={pool_len}], got {tuple(req_to_token.shape)}"
        )


def assign_req_to_token_pool(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """``req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]]`` = the next
    ``end - start`` entries of ``out_cache_loc`` (requests in order).

    req_pool_indices, start_offset, end_offset: [bs]; out_cache_loc: [>= sum(end - start)] int64.
    Raises ValueError if out_cache_loc is too short or a range is reversed.
    """
    rows, columns, total = _ragged_slots(req_pool_indices, req_to_token, start_offset,
                                         end_offset, out_cache_loc, pool_len)
    req_to_token[rows, columns] = out_cache_loc[:total].to(req_to_token.dtype)


def assign_extend_cache_locs(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """The reverse gather: ``out_cache_loc[:total]`` = the slots
    ``req_to_token[req_pool_indices[i], start_offset[i]:end_offset[i]]`` of all requests in
    order (entries past ``total = sum(end - start)`` are left alone).

    out_cache_loc: [>= total] int64, written. Raises ValueError if it is too short.
    """
    rows, columns, total = _ragged_slots(req_pool_indices, req_to_token, start_offset,
                                         end_offset, out_cache_loc, pool_len)
    out_cache_loc[:total] = req_to_token[rows, columns].to(out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    seq_lens: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
    topk: int,
    num_steps: int,
) -> None:
    """``out_cache_loc.view(bs, topk * num_steps)[i]`` = the ``topk * num_steps`` slots of
    request i from ``seq_lens[i]`` on (the draft slots the allocator reserved).

    req_pool_indices, seq_lens: [bs]; out_cache_loc: [bs * topk * num_steps] int64, written.
    """
    _check_pool(req_to_token, pool_len)
    bs = req_pool_indices.numel()
    width = topk * num_steps
    if out_cache_loc.numel() != bs * width:
        raise ValueError(
            f"out_cache_loc must have bs * topk * num_steps = {bs * width} entries, "
            f"got {out_cache_loc.numel()}"
        )
    columns = seq_lens.to(torch.int64).unsqueeze(1) + torch.arange(width, device=seq_lens.device)
    rows = req_pool_indices.to(torch.int64).unsqueeze(1)
    out_cache_loc.view(bs, width).copy_(req_to_token[rows, columns])


def build_draft_decode_metadata(
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    topk: int,
    num_steps: int,
    pool_len: int,
) -> torch.Tensor:
    """The request-to-token map of the multi-step draft decode: row ``b * topk + k`` holds
    request b's prefix (``seq_lens[b]`` slots) followed by candidate k's ``num_steps`` draft
    slots, which ``assign_draft_cache_locs_contiguous`` laid out at ``seq_lens[b] + k *
    num_steps``.

    Returns [bs * topk, pool_len] of req_to_token's dtype; entries past
    ``seq_lens[b] + num_steps`` are the request's row copied unchanged (undefined for callers).
    Cost O(bs * topk * pool_len).
    """
    _check_pool(req_to_token, pool_len)
    bs = req_pool_indices.numel()
    rows = req_pool_indices.to(torch.int64)
    lens = seq_lens.to(torch.int64).view(bs, 1, 1)
    draft = req_to_token[rows.repeat_interleave(topk)]
    steps = torch.arange(num_steps, device=req_to_token.device)
    candidate = torch.arange(topk, device=req_to_token.device).view(1, topk, 1)
    source = (lens + candidate * num_steps + steps).view(bs, topk * num_steps)
    values = req_to_token[rows.unsqueeze(1), source].view(bs, topk, num_steps)
    target = (lens + steps).expand(bs, topk, num_steps)
    draft.view(bs, topk, pool_len).scatter_(2, target, values)
    return draft


def fill_accept_out_cache_loc(
    accept_index: torch.Tensor, out_cache_loc: torch.Tensor, accept_out_cache_loc: torch.Tensor
) -> None:
    """Compact the accepted tokens' slots: ``accept_out_cache_loc[:k]`` =
    ``out_cache_loc[accept_index[i]]`` for the k entries of the flattened ``accept_index``
    that are not -1, in order.

    accept_out_cache_loc: [>= accept_index.numel()] int64, written (the tail left alone).
    """
    if accept_out_cache_loc.numel() < accept_index.numel():
        raise ValueError(
            f"accept_out_cache_loc has {accept_out_cache_loc.numel()} entries, needs at least "
            f"accept_index.numel() = {accept_index.numel()}"
        )
    flat = accept_index.reshape(-1).to(torch.int64)
    accepted = flat[flat > -1]
    accept_out_cache_loc[: accepted.numel()] = out_cache_loc[accepted]


register(
    "assign_req_to_token_pool_cpu(Tensor req_pool_indices, Tensor(a!) req_to_token, "
    "Tensor start_offset, Tensor end_offset, Tensor out_cache_loc, int pool_len) -> ()",
    assign_req_to_token_pool,
)
register(
    "assign_extend_cache_locs_cpu(Tensor req_pool_indices, Tensor req_to_token, "
    "Tensor start_offset, Tensor end_offset, Tensor(a!) out_cache_loc, int pool_len) -> ()",
    assign_extend_cache_locs,
)
register(
    "assign_draft_cache_locs_contiguous_cpu(Tensor req_pool_indices, Tensor req_to_token, "
    "Tensor seq_lens, Tensor(a!) out_cache_loc, int pool_len, int topk, int num_steps) -> ()",
    assign_draft_cache_locs_contiguous,
)
register(
    "build_draft_decode_metadata_cpu(Tensor req_to_token, Tensor req_pool_indices, "
    "Tensor seq_lens, int topk, int num_steps, int pool_len) -> Tensor",
    build_draft_decode_metadata,
)
register(
    "fill_accept_out_cache_loc_cpu(Tensor accept_index, Tensor out_cache_loc, "
    "Tensor(a!) accept_out_cache_loc) -> ()",
    fill_accept_out_cache_loc,
)
