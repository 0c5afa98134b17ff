"""Token-id bookkeeping of the speculative step: the bonus token of each request and the
left rotation of the draft-extend input ids. Semantics of sgl-kernel's CPU ``spec.cpp``."""

from __future__ import annotations

import torch

from ._registry import register


def fill_bonus_tokens(
    accept_tokens: torch.Tensor,
    accept_lens: torch.Tensor,
    bonus_tokens: torch.Tensor,
    accept_stride: int,
) -> None:
    """``bonus_tokens[i]`` = ``accept_tokens.view(-1)[i * accept_stride + accept_lens[i] - 1]``:
    the last accepted token of each request.

    accept_tokens: [bs * accept_stride]; accept_lens: [bs] (the bonus token included, >= 1);
    bonus_tokens: [bs], written. Raises ValueError for a length outside [1, accept_stride].
    """
    bs = accept_lens.numel()
    if accept_tokens.numel() != bs * accept_stride or bonus_tokens.numel() != bs:
        raise ValueError(
            f"fill_bonus_tokens_cpu: need accept_tokens of bs * accept_stride = "
            f"{bs * accept_stride} and bonus_tokens of {bs} entries, got "
            f"{accept_tokens.numel()} and {bonus_tokens.numel()}"
        )
    lens = accept_lens.to(torch.int64)
    if bool(((lens < 1) | (lens > accept_stride)).any()):
        raise ValueError(f"accept_lens must lie in [1, {accept_stride}], got {lens.tolist()}")
    last = torch.arange(bs, device=lens.device) * accept_stride + lens - 1
    bonus_tokens.view(-1).copy_(accept_tokens.reshape(-1)[last])


def rotate_input_ids(
    input_ids: torch.Tensor,
    extend_start_loc: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    topk_index: torch.Tensor,
    select_index: torch.Tensor | None = None,
) -> None:
    """In place: shift each request's segment ``input_ids[start : start + len]`` left by one
    and put ``topk_index[i]`` in the freed last slot, or at ``select_index[i]`` when given
    (requests with len 0 untouched).

    input_ids: [num_tokens] int64; extend_start_loc, extend_seq_lens, topk_index,
    select_index: [bs]. Cost O(num_tokens).
    """
    starts = extend_start_loc.to(torch.int64)
    lens = extend_seq_lens.to(torch.int64)
    shifted = (lens - 1).clamp(min=0)
    total = int(shifted.sum())
    request = torch.repeat_interleave(
        torch.arange(lens.numel(), device=lens.device), shifted, output_size=total
    )
    first = torch.cumsum(shifted, 0) - shifted
    target = starts[request] + torch.arange(total, device=lens.device) - first[request]
    input_ids[target] = input_ids[target + 1]  # the gather copies first: segments shift intact
    nonempty = lens > 0
    slot = select_index.to(torch.int64) if select_index is not None else starts + lens - 1
    input_ids[slot[nonempty]] = topk_index[nonempty].to(input_ids.dtype)


register(
    "fill_bonus_tokens_cpu(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens, "
    "int accept_stride) -> ()",
    fill_bonus_tokens,
)
register(
    "rotate_input_ids_cpu(Tensor(a!) input_ids, Tensor extend_start_loc, "
    "Tensor extend_seq_lens, Tensor topk_index, Tensor? select_index=None) -> ()",
    rotate_input_ids,
)
