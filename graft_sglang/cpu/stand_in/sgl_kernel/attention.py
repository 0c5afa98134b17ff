"""Paged attention over SGLang's KV pool: ``decode_attention_cpu`` and ``extend_attention_cpu``
with the arguments SGLang 0.5.23's ``intel_amx`` backend passes.

Semantics of sgl-kernel's CPU ``decode.cpp`` / ``extend.cpp``. The keys of request b are the slots
``req_to_token[req_pool_indices[b], :]`` in ``k_buffer [slots, num_kv_heads, head_dim]`` (likewise
V); query head h reads kv head ``h // (num_heads // num_kv_heads)`` (GQA). Scores are
``sm_scale * q.k``, softcapped to ``logit_cap * tanh(s / logit_cap)`` when ``logit_cap > 0``; an
attention sink ``sinks[h]`` adds ``exp(sinks[h])`` to the softmax denominator. A sliding window
``w > 0`` keeps the keys less than ``w`` positions behind the query. fp8 buffers hold values divided
by ``k_scale`` / ``v_scale``. Everything is computed in float32 and written in the output's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._registry import register

# Upper bound on the float32 score elements one extend chunk materialises (64 MiB).
_SCORE_BUDGET = 1 << 24
_FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


def _cache_rows(buffer: torch.Tensor, slots: torch.Tensor, scale: float) -> torch.Tensor:
    """The cached rows ``slots [B, N]`` of ``buffer [slots, Hkv, dim]`` as [B, Hkv, N, dim]
    float32 (fp8 values rescaled): the layout the score and value matmuls read without copies.
    One row gather, O(B * N * Hkv * dim)."""
    b, n = slots.shape
    kv_heads, dim = buffer.shape[1], buffer.shape[2]
    if buffer.is_contiguous():  # gather each head's row directly into [B, Hkv, N] order
        heads = torch.arange(kv_heads, device=slots.device).view(1, kv_heads, 1)
        rows = (slots.unsqueeze(1) * kv_heads + heads).flatten()
        gathered = buffer.view(-1, dim).index_select(0, rows).view(b, kv_heads, n, dim)
    else:
        gathered = buffer.index_select(0, slots.flatten()).view(b, n, kv_heads, dim)
        gathered = gathered.transpose(1, 2)
    gathered = gathered.to(torch.float32)
    return gathered * scale if buffer.dtype in _FP8 else gathered


def _store_rows(
    buffer: torch.Tensor, slots: torch.Tensor, values: torch.Tensor, scale: float
) -> None:
    """``buffer[slots] = values`` in the buffer's dtype (fp8: divided by ``scale`` first)."""
    if buffer.dtype in _FP8:
        values = values.to(torch.float32) / scale
    buffer[slots] = values.to(buffer.dtype)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    allowed: torch.Tensor,
    sm_scale: float,
    logit_cap: float,
    sinks: torch.Tensor | None,
) -> torch.Tensor:
    """Masked softmax attention of ``B`` independent groups.

    q: [B, M, H, D]; k: [B, Hkv, N, D], v: [B, Hkv, N, Dv] (float32, as ``_cache_rows`` gives);
    allowed: [B, M, N] bool; sinks: [H] or None. Returns [B, Hkv, G, M, Dv] float32 with
    ``G = H // Hkv`` (query head ``kv * G + g``); a query with no allowed key gets zeros.
    Without softcap and sinks torch's fused ``scaled_dot_product_attention`` computes it;
    otherwise the scores are materialised: O(B * M * N * H) memory. Time
    O(B * M * N * H * (D + Dv)).
    """
    b, m, h, d = q.shape
    kv_heads, n, dv = k.shape[1], k.shape[2], v.shape[3]
    group = h // kv_heads
    if n == 0:
        return q.new_zeros((b, kv_heads, group, m, dv), dtype=torch.float32)
    if logit_cap <= 0 and sinks is None:
        out = F.scaled_dot_product_attention(
            q.to(torch.float32).transpose(1, 2), k, v, attn_mask=allowed.unsqueeze(1),
            scale=sm_scale, enable_gqa=True)  # [B, H, M, Dv]
        out = out.unflatten(1, (kv_heads, group))
    else:
        # [B, Hkv, G*M, D]: the G query heads sharing a kv head become extra query rows.
        q_rows = q.to(torch.float32).view(b, m, kv_heads, group, d).permute(0, 2, 3, 1, 4)
        q_rows = q_rows.reshape(b, kv_heads, group * m, d)
        scores = torch.matmul(q_rows, k.transpose(-1, -2)).mul_(sm_scale)
        scores = scores.view(b, kv_heads, group, m, n)
        if logit_cap > 0:
            scores = scores.div_(logit_cap).tanh_().mul_(logit_cap)
        scores.masked_fill_(~allowed.view(b, 1, 1, m, n), float("-inf"))
        if sinks is None:
            weights = torch.softmax(scores, dim=-1)
        else:  # the sink is one more logit in the denominator, attached to no value
            sink = sinks.to(torch.float32).view(1, kv_heads, group, 1, 1)
            peak = torch.maximum(scores.amax(dim=-1, keepdim=True), sink)
            weights = scores.sub_(peak).exp_()
            weights /= weights.sum(dim=-1, keepdim=True) + torch.exp(sink - peak)
        out = torch.matmul(weights.view(b, kv_heads, group * m, n), v)
        out = out.view(b, kv_heads, group, m, dv)
    empty = ~allowed.any(dim=-1)  # softmax over no key is NaN: those queries read nothing
    if bool(empty.any()):
        out = out.masked_fill(empty.view(b, 1, 1, m, 1), 0.0)
    return out


def _new_rows(rows: torch.Tensor) -> torch.Tensor:
    """New tokens' K or V [N, Hkv, dim] as [1, Hkv, N, dim] float32 (a view when float32)."""
    return rows.to(torch.float32).transpose(0, 1).unsqueeze(0)


def _write_heads_last(dst: torch.Tensor, out: torch.Tensor) -> None:
    """``dst [M, Hkv * G, Dv]`` = ``out [Hkv, G, M, Dv]`` (query head ``kv * G + g``), one copy."""
    kv_heads, group = out.shape[0], out.shape[1]
    dst.unflatten(1, (kv_heads, group)).copy_(out.permute(2, 0, 1, 3))


def decode_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: float,
    v_scale: float,
    output: torch.Tensor,
    key: torch.Tensor | None,
    value: torch.Tensor | None,
    loc: torch.Tensor,
    attn_logits: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    logit_cap: float,
    is_cross_attn: bool,
    sliding_window_size: int,
    encoder_lens: torch.Tensor | None,
    sinks: torch.Tensor | None,
) -> None:
    """One query token per sequence against its ``seq_lens[b]`` cached tokens.

    query: [bs, H, D]; output: [bs, H, Dv], written. When ``key``/``value`` ([bs, Hkv, D/Dv])
    are given they are first stored at slots ``loc [bs]`` (the current token is part of its
    sequence). Cross attention reads the ``encoder_lens[b]`` encoder tokens instead; with
    ``encoder_lens`` and self attention the sequence starts after them. ``attn_logits`` (the
    real kernel's split-KV scratch) is not used. All sequences at once, padded to the longest:
    O(bs * max_len * H * D).
    """
    if key is not None and value is not None:
        if k_cache.data_ptr() == v_cache.data_ptr():
            raise NotImplementedError(
                "decode_attention_cpu: MLA (one shared K/V buffer) is not implemented by the "
                "sgl_kernel stand-in"
            )
        slots = loc.to(torch.int64)
        _store_rows(k_cache, slots, key, k_scale)
        _store_rows(v_cache, slots, value, v_scale)
    bs = query.shape[0]
    lens = (encoder_lens if is_cross_attn else seq_lens).to(torch.int64)
    if encoder_lens is not None and not is_cross_attn:
        first = encoder_lens.to(torch.int64)
    else:
        first = torch.zeros_like(lens)
    if sliding_window_size > 0:
        windowed = lens > sliding_window_size
        first = torch.where(windowed, lens - sliding_window_size, first)
        lens = lens.clamp(max=sliding_window_size)
    longest = int(lens.max()) if bs else 0
    offsets = torch.arange(longest, device=query.device)
    allowed = offsets < lens.unsqueeze(1)  # [bs, longest]
    columns = torch.where(allowed, first.unsqueeze(1) + offsets, 0)
    slots = req_to_token[req_pool_indices.to(torch.int64).unsqueeze(1), columns].to(torch.int64)
    out = attend(
        query.unsqueeze(1),
        _cache_rows(k_cache, slots, k_scale),
        _cache_rows(v_cache, slots, v_scale),
        allowed.unsqueeze(1),
        sm_scale,
        logit_cap,
        sinks,
    )  # [bs, Hkv, G, 1, Dv]: query head kv * G + g
    output.copy_(out.reshape(output.shape))


def extend_attention(
    q_extend: torch.Tensor,
    k_extend: torch.Tensor | None,
    v_extend: torch.Tensor | None,
    o_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    k_scale: float,
    v_scale: float,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    max_len_extend: int,
    sm_scale: float,
    logit_cap: float,
    is_cross_attn: bool,
    sliding_window_size: int,
    encoder_lens: torch.Tensor | None,
    sinks: torch.Tensor | None,
    tree_mask: torch.Tensor | None = None,
    is_causal: bool = True,
) -> None:
    """Each request's ``extend_seq_lens[b]`` new tokens (rows ``extend_start_loc[b]`` on of
    q/k/v_extend, [tokens, heads, dim]) against its ``seq_lens[b] - extend_seq_lens[b]`` cached
    prefix tokens and the new tokens themselves; o_extend [tokens, H, Dv] written.

    The prefix is fully visible; among the new tokens ``is_causal`` keeps the ones at or before
    the query. ``tree_mask`` (TARGET_VERIFY / NGRAM: QLEN_ONLY layout,
    [bs * max_len_extend^2] bool, ``[b, i, j]`` = new token i may see new token j; every request
    extends by exactly ``max_len_extend``) replaces that rule. With ``k_extend`` None the new
    tokens' K/V are read from the cache (already written there). Cross attention sees the
    ``encoder_lens[b]`` cached encoder tokens only. Raises ValueError for a tree mask of the
    wrong size, non-uniform extend lengths, or one combined with a sliding window or cross
    attention. A Python loop over requests, each vectorised (queries chunked to bound memory):
    O(sum_b extend_b * seq_b * H * D).
    """
    bs = seq_lens.numel()
    if tree_mask is not None:
        if tree_mask.numel() != bs * max_len_extend * max_len_extend:
            raise ValueError(
                f"extend_attention_cpu: tree_mask must have bs * max_len_extend^2 = "
                f"{bs * max_len_extend * max_len_extend} entries, got {tree_mask.numel()}"
            )
        if sliding_window_size > 0 or is_cross_attn:
            raise ValueError(
                "extend_attention_cpu: tree_mask does not combine with a sliding window or "
                "cross attention"
            )
        tree = tree_mask.view(bs, max_len_extend, max_len_extend).to(torch.bool)
    total_lens = seq_lens.tolist()
    new_lens = extend_seq_lens.tolist()
    starts = extend_start_loc.tolist()
    rows = req_pool_indices.tolist()
    encoder = encoder_lens.tolist() if encoder_lens is not None else None
    device = q_extend.device
    for b in range(bs):
        new, start = new_lens[b], starts[b]
        if new == 0:
            continue
        if tree_mask is not None and new != max_len_extend:
            raise ValueError(
                f"extend_attention_cpu: a tree_mask needs every extend length equal to "
                f"max_len_extend = {max_len_extend}, request {b} extends by {new}"
            )
        table = req_to_token[rows[b]]
        if is_cross_attn:
            slots = table[: encoder[b]].to(torch.int64).unsqueeze(0)
            keys = _cache_rows(k_buffer, slots, k_scale)
            values = _cache_rows(v_buffer, slots, v_scale)
            allowed = torch.ones(new, slots.numel(), dtype=torch.bool, device=device)
        else:
            first = encoder[b] if encoder is not None else 0
            prefix = total_lens[b] - new
            if k_extend is None or v_extend is None:
                slots = table[first : first + prefix + new].to(torch.int64).unsqueeze(0)
                keys = _cache_rows(k_buffer, slots, k_scale)
                values = _cache_rows(v_buffer, slots, v_scale)
            else:
                slots = table[first : first + prefix].to(torch.int64).unsqueeze(0)
                keys = torch.cat([_cache_rows(k_buffer, slots, k_scale),
                                  _new_rows(k_extend[start : start + new])], dim=2)
                values = torch.cat([_cache_rows(v_buffer, slots, v_scale),
                                    _new_rows(v_extend[start : start + new])], dim=2)
            query_pos = torch.arange(prefix, prefix + new, device=device).unsqueeze(1)
            key_pos = torch.arange(prefix + new, device=device)
            if not is_causal:
                allowed = torch.ones(new, prefix + new, dtype=torch.bool, device=device)
            else:
                allowed = key_pos <= query_pos
            if tree_mask is not None:
                allowed[:, prefix:] = tree[b]
            if sliding_window_size > 0:
                allowed &= query_pos - key_pos < sliding_window_size
        chunk = max(1, _SCORE_BUDGET // max(1, q_extend.shape[1] * keys.shape[2]))
        for lo in range(0, new, chunk):
            hi = min(new, lo + chunk)
            out = attend(
                q_extend[start + lo : start + hi].unsqueeze(0),
                keys,
                values,
                allowed[lo:hi].unsqueeze(0),
                sm_scale,
                logit_cap,
                sinks,
            )
            _write_heads_last(o_extend[start + lo : start + hi], out[0])


register(
    "decode_attention_cpu(Tensor query, Tensor(a!) k_cache, Tensor(b!) v_cache, float k_scale, "
    "float v_scale, Tensor(c!) output, Tensor? key, Tensor? value, Tensor loc, "
    "Tensor attn_logits, Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, "
    "float sm_scale, float logit_cap, bool is_cross_attn, int sliding_window_size, "
    "Tensor? encoder_lens, Tensor? sinks) -> ()",
    decode_attention,
)
register(
    "extend_attention_cpu(Tensor q_extend, Tensor? k_extend, Tensor? v_extend, "
    "Tensor(a!) o_extend, Tensor k_buffer, Tensor v_buffer, float k_scale, float v_scale, "
    "Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens, Tensor extend_seq_lens, "
    "Tensor extend_start_loc, int max_len_extend, float sm_scale, float logit_cap, "
    "bool is_cross_attn, int sliding_window_size, Tensor? encoder_lens, Tensor? sinks, "
    "Tensor? tree_mask=None, bool is_causal=True) -> ()",
    extend_attention,
)
