"""Cost calibration of the offline engine: forwards of ``bs x n`` new tokens on a transformers
target and draft passes of the EAGLE-3 head, timed by ``cost.model.measure_costs``.

The probes run the same kind of work the engine's step runs (float 4D mask over a filled KV
cache, logits of every new token, the target's feature layers when the head needs them; a head
pass of ``topk`` rows per request with its logits and top-k), on random token ids after a
context of ``context_len`` cached tokens, and leave the cache as they found it.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import DynamicCache

from graft_sglang.cost.model import CostModel, load_or_measure, measure_costs
from graft_sglang.eagle3.head import Eagle3Head


class VerifyProbe:
    """``RunVerify`` for a transformers causal LM: one forward of ``bs x n`` new tokens (a
    chain below each request's context; cost depends on the token count, not the tree shape)
    over a cache of ``context_len`` tokens per request. O(bs * (context_len + n)) memory."""

    def __init__(self, model: torch.nn.Module, context_len: int = 192,
                 feature_layers: Sequence[int] = (), seed: int = 0) -> None:
        if context_len < 1:
            raise ValueError(f"context_len must be >= 1, got {context_len}")
        self.model = model
        self.context_len = context_len
        self.feature_layers = tuple(feature_layers)
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device
        self.vocab = int(model.config.vocab_size)
        self._gen = torch.Generator().manual_seed(seed)
        self._bs = 0
        self._cache = DynamicCache()

    def _ids(self, bs: int, n: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (bs, n), generator=self._gen).to(self.device)

    @torch.no_grad()
    def _fill(self, bs: int) -> None:
        self._cache = DynamicCache()
        self.model(input_ids=self._ids(bs, self.context_len), past_key_values=self._cache,
                   use_cache=True, logits_to_keep=1)
        self._bs = bs

    @torch.no_grad()
    def __call__(self, bs: int, n: int) -> torch.Tensor:
        if bs != self._bs:
            self._fill(bs)
        c = self.context_len
        allowed = torch.ones(n, c + n, dtype=torch.bool, device=self.device)
        allowed[:, c:] = torch.tril(allowed[:, c:])
        mask = torch.zeros(bs, 1, n, c + n, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        positions = torch.arange(c, c + n, device=self.device).expand(bs, n)
        out = self.model(input_ids=self._ids(bs, n), attention_mask=mask,
                         position_ids=positions, past_key_values=self._cache, use_cache=True,
                         output_hidden_states=bool(self.feature_layers))
        predict = out.logits.float().argmax(dim=-1)
        self._cache.crop(-n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return predict


class Eagle3PassProbe:
    """``RunDraft`` for an EAGLE-3 head: one draft pass of ``topk`` rows per request (head
    step over ``context_len`` cached keys per request, logits over the draft vocabulary,
    softmax, top-k), as one level of SGLang's draft loop. O(bs * topk * context_len)."""

    def __init__(self, head: Eagle3Head, context_len: int = 192, topk: int = 4,
                 seed: int = 0) -> None:
        if context_len < 1 or topk < 1:
            raise ValueError(f"context_len and topk must be >= 1, got {context_len}, {topk}")
        self.head, self.context_len, self.topk = head, context_len, topk
        self._gen = torch.Generator().manual_seed(seed)
        self._bs = 0

    @torch.no_grad()
    def __call__(self, bs: int) -> torch.Tensor:
        c, k = self.head.config, self.topk
        if bs != self._bs:
            shape = (bs, self.context_len, c.num_key_value_heads, c.head_dim)
            self._keys = torch.randn(shape, generator=self._gen)
            self._values = torch.randn(shape, generator=self._gen)
            self._bs = bs
        rows = bs * k
        hidden = torch.randn(rows, c.hidden_size, generator=self._gen)
        tokens = torch.randint(0, c.vocab_size, (rows,), generator=self._gen)
        positions = torch.full((rows,), self.context_len)

        def attend(q: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            groups = c.num_attention_heads // c.num_key_value_heads
            keys = torch.cat([self._keys, key.view(bs, k, *key.shape[1:])], dim=1)
            values = torch.cat([self._values, value.view(bs, k, *value.shape[1:])], dim=1)
            keys = keys.repeat_interleave(groups, dim=2)
            values = values.repeat_interleave(groups, dim=2)
            qb = q.view(bs, k, *q.shape[1:])
            scores = torch.einsum("bnhd,bmhd->bhnm", qb, keys) / c.head_dim ** 0.5
            out = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), values)
            return out.reshape(rows, *q.shape[1:])

        out = self.head.step(hidden, tokens, positions, attend)
        probs = torch.softmax(self.head.logits(out).float(), dim=-1)
        return torch.topk(probs, k, dim=-1).indices


def engine_cost_key(model: torch.nn.Module, head: Eagle3Head | None, context_len: int,
                    batch_sizes: Sequence[int], tree_sizes: Sequence[int]) -> dict:
    """What a cached engine calibration must match: machine, threads, model shapes, dtype."""
    param = next(model.parameters())
    cfg = model.config
    return {
        "machine": platform.machine(), "processor": platform.processor(),
        "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
        "device": str(param.device), "dtype": str(param.dtype), "torch": torch.__version__,
        "model": [type(model).__name__, cfg.num_hidden_layers, cfg.hidden_size,
                  cfg.vocab_size],
        "head": None if head is None else [head.config.hidden_size,
                                           head.config.draft_vocab_size],
        "context_len": context_len, "batch_sizes": list(batch_sizes),
        "tree_sizes": list(tree_sizes),
    }


def engine_cost_model(
    model: torch.nn.Module, head: Eagle3Head | None = None, *, cache: str | Path | None = None,
    batch_sizes: Sequence[int] = (1,), tree_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    context_len: int = 192, topk: int = 4, feature_layers: Sequence[int] = (),
    rounds: int = 5, warmup: int = 1,
) -> CostModel:
    """The engine's start-up calibration: measured with the probes above, cached in ``cache``
    (a JSON file, reused while ``engine_cost_key`` matches) when given."""
    def measure() -> CostModel:
        return measure_costs(
            VerifyProbe(model, context_len, feature_layers),
            None if head is None else Eagle3PassProbe(head, context_len, topk),
            batch_sizes=batch_sizes, tree_sizes=tree_sizes, rounds=rounds, warmup=warmup,
            evidence={"context_len": context_len, "topk": topk})

    if cache is None:
        return measure()
    key = engine_cost_key(model, head, context_len, batch_sizes, tree_sizes)
    return load_or_measure(cache, key, measure)
