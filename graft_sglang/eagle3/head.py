"""The EAGLE-3 draft head (SGLang's ``LlamaForCausalLMEagle3`` with one decoder layer) in plain
PyTorch, for training and CPU drafting.

Input of one draft step at position ``i``: a hidden ``[n, H]`` (step 0: ``fc`` of the target's
three feature layers at ``i``, ``[n, 3H]``; later steps: the head's own previous output) and the
embedding of the token at ``i + 1``. Output: the pre-norm hidden (fed to the next step) and logits
over the reduced draft vocabulary ``[n, D]``; ``d2t`` maps a draft id to its target id.
Arithmetic follows ``srt/models/llama_eagle3.py``: ``residual = hidden``;
``qkv(cat(input_layernorm(embeds), hidden_norm(hidden)))``; attention; residual adds; MLP;
``norm`` -> ``lm_head``. Attention is given by the caller as a function of (q, k, v), since
training (unrolled steps) and drafting (KV cache + tree mask) see different keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(q [n, heads, d], k [n, kv_heads, d], v [n, kv_heads, d]) -> [n, heads, d]; the keys/values
of the current step, to be combined with whatever the caller caches."""


@dataclass
class HeadConfig:
    hidden_size: int = 576
    num_attention_heads: int = 9
    num_key_value_heads: int = 3
    intermediate_size: int = 1536
    rms_norm_eps: float = 1e-5
    rope_theta: float = 100000.0
    vocab_size: int = 49152  # the target's
    draft_vocab_size: int = 8192
    num_aux: int = 3  # fused target layers

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


def rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Llama RoPE (half-split) of x [n, heads, d] at positions [n]."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    ang = positions.float()[:, None] * inv[None]  # [n, d/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    x1, x2 = x[..., : d // 2].float(), x[..., d // 2:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Eagle3Head(nn.Module):
    """Parameter names are those of an EAGLE-3 checkpoint (``midlayer.*``, ``fc``, ``norm``,
    ``lm_head``, buffers ``d2t``/``t2d``); ``embed_tokens`` is the target's, frozen and not
    exported (SGLang shares the target's embedding with an EAGLE-3 head)."""

    def __init__(self, config: HeadConfig, embed_weight: torch.Tensor) -> None:
        super().__init__()
        c = self.config = config
        h, d = c.hidden_size, c.head_dim
        if tuple(embed_weight.shape) != (c.vocab_size, h):
            raise ValueError(f"embed_weight: expected shape {(c.vocab_size, h)}, "
                             f"got {tuple(embed_weight.shape)}")
        self.embed_tokens = nn.Embedding.from_pretrained(embed_weight.detach().clone(),
                                                         freeze=True)
        self.fc = nn.Linear(c.num_aux * h, h, bias=False)
        self.midlayer = nn.Module()
        m = self.midlayer
        m.input_layernorm = RMSNorm(h, c.rms_norm_eps)
        m.hidden_norm = RMSNorm(h, c.rms_norm_eps)
        m.self_attn = nn.Module()
        m.self_attn.q_proj = nn.Linear(2 * h, c.num_attention_heads * d, bias=False)
        m.self_attn.k_proj = nn.Linear(2 * h, c.num_key_value_heads * d, bias=False)
        m.self_attn.v_proj = nn.Linear(2 * h, c.num_key_value_heads * d, bias=False)
        m.self_attn.o_proj = nn.Linear(c.num_attention_heads * d, h, bias=False)
        m.post_attention_layernorm = RMSNorm(h, c.rms_norm_eps)
        m.mlp = nn.Module()
        m.mlp.gate_proj = nn.Linear(h, c.intermediate_size, bias=False)
        m.mlp.up_proj = nn.Linear(h, c.intermediate_size, bias=False)
        m.mlp.down_proj = nn.Linear(c.intermediate_size, h, bias=False)
        self.norm = RMSNorm(h, c.rms_norm_eps)
        self.lm_head = nn.Linear(h, c.draft_vocab_size, bias=False)
        # d2t[i] = target id of draft id i minus i (the EAGLE-3 checkpoint convention).
        self.register_buffer("d2t", torch.zeros(c.draft_vocab_size, dtype=torch.int64))
        self.register_buffer("t2d", torch.zeros(c.vocab_size, dtype=torch.bool))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)

    # -- token maps -------------------------------------------------------------------------
    def set_draft_vocab(self, target_ids: torch.Tensor) -> None:
        """target_ids [D]: distinct target ids of the draft vocabulary, in draft-id order."""
        c = self.config
        if target_ids.shape != (c.draft_vocab_size,) or len(target_ids.unique()) != len(
                target_ids) or not 0 <= int(target_ids.min()) <= int(target_ids.max()) < \
                c.vocab_size:
            raise ValueError(f"target_ids: expected {c.draft_vocab_size} distinct ids in "
                             f"[0, {c.vocab_size})")
        self.d2t.copy_(target_ids - torch.arange(c.draft_vocab_size))
        self.t2d.zero_()
        self.t2d[target_ids] = True

    @property
    def draft_to_target(self) -> torch.Tensor:
        """[D] int64: target id of each draft id."""
        return self.d2t + torch.arange(self.config.draft_vocab_size)

    def init_from_target(self, target: nn.Module) -> None:
        """Copy the target's final norm and its LM-head rows of the draft vocabulary."""
        with torch.no_grad():
            self.norm.weight.copy_(target.model.norm.weight)
            self.lm_head.weight.copy_(target.lm_head.weight[self.draft_to_target])

    # -- forward ----------------------------------------------------------------------------
    def step(
        self, hidden: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor,
        attend: Attend,
    ) -> torch.Tensor:
        """One draft step for n rows.

        hidden: [n, 3H] target features (step 0) or [n, H] the previous step's output.
        token_ids: [n] the token following each row's hidden; positions: [n].
        Returns the pre-norm output hidden [n, H] (``logits`` of it predicts the token after
        ``token_ids``; it is also the next step's input hidden).
        """
        c, m = self.config, self.midlayer
        if hidden.shape[-1] != c.hidden_size:
            hidden = self.fc(hidden)
        residual = hidden
        x = torch.cat([m.input_layernorm(self.embed_tokens(token_ids)), m.hidden_norm(hidden)],
                      dim=-1)
        n, d = x.shape[0], c.head_dim
        a = m.self_attn
        q = rotate(a.q_proj(x).view(n, c.num_attention_heads, d), positions, c.rope_theta)
        k = rotate(a.k_proj(x).view(n, c.num_key_value_heads, d), positions, c.rope_theta)
        v = a.v_proj(x).view(n, c.num_key_value_heads, d)
        hidden = a.o_proj(attend(q, k, v).reshape(n, -1)) + residual
        normed, mlp = m.post_attention_layernorm(hidden), m.mlp
        return mlp.down_proj(nn.functional.silu(mlp.gate_proj(normed)) * mlp.up_proj(normed)) \
            + hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, H] (a ``step`` output) -> draft logits [n, D]."""
        return self.lm_head(self.norm(hidden))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     visible: torch.Tensor) -> torch.Tensor:
    """q [n, heads, d]; k, v [m, kv_heads, d]; visible [n, m] bool. Returns [n, heads, d]."""
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q, k) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hnm,mhd->nhd", scores.softmax(-1), v)
