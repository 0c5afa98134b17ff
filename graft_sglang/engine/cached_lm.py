"""A transformers causal LM with its KV cache, run on trees: the engine's target and LM drafters.

``forward`` appends new tokens at explicit positions with an explicit visibility mask, so one
call can verify a whole tree (each node sees the committed prefix and its ancestors) or draft a
tree level (each node sees the prefix and its own ancestors among earlier draft levels).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class CachedLM:
    """A causal LM plus a ``DynamicCache`` for one sequence."""

    def __init__(self, model: torch.nn.Module, feature_layers: tuple[int, ...] = ()) -> None:
        self.model = model
        self.feature_layers = feature_layers
        self.cache = DynamicCache()
        param = next(model.parameters())
        self.dtype, self.device = param.dtype, param.device

    @property
    def cached_len(self) -> int:
        return self.cache.get_seq_length()

    def reset(self) -> None:
        self.cache = DynamicCache()

    @torch.no_grad()
    def forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        new_visible: torch.Tensor | None = None,
        cached_visible: torch.Tensor | None = None,
        last_logits_only: bool = False,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Append ``ids [Q]`` at ``positions [Q]``.

        new_visible:    [Q, Q] bool, which new tokens each new token sees (None = causal).
        cached_visible: [Q, C] bool over the C cached entries (None = all of them).
        Returns logits [Q, V] (float32; [1, V] for the last token if ``last_logits_only``: the
        LM head over a long prompt costs more than the layers) and hidden states
        {layer: [Q, H]} for ``feature_layers``.
        """
        q, c = ids.shape[0], self.cached_len
        dev = self.device
        if new_visible is None:
            new_visible = torch.tril(torch.ones(q, q, dtype=torch.bool, device=dev))
        if cached_visible is None:
            cached_visible = torch.ones(q, c, dtype=torch.bool, device=dev)
        allowed = torch.cat([cached_visible.to(dev), new_visible.to(dev)], dim=1)
        # A float mask (0 / finfo.min): eager attention would add a bool mask as 0 / 1.
        mask = torch.zeros(1, 1, q, c + q, dtype=self.dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        out = self.model(
            input_ids=ids.view(1, q).to(dev), attention_mask=mask,
            position_ids=positions.view(1, q).to(dev), past_key_values=self.cache,
            use_cache=True, output_hidden_states=bool(self.feature_layers),
            logits_to_keep=1 if last_logits_only else 0,
        )
        features = {layer: out.hidden_states[layer][0] for layer in self.feature_layers}
        return out.logits[0].float(), features

    def keep(self, start: int, entries: list[int]) -> None:
        """Cache := cache[:start] + cache[start + e for e in entries]: the accepted path's
        entries are gathered to the front of the tree window in place, then the rest is cropped
        (O(tree) work; the prefix is neither recomputed nor copied)."""
        idx = torch.tensor(entries, dtype=torch.long, device=self.device) + start
        end = start + len(entries)
        for layer in self.cache.layers:
            layer.keys[..., start:end, :] = layer.keys.index_select(-2, idx)
            layer.values[..., start:end, :] = layer.values.index_select(-2, idx)
        self.truncate(end)

    def truncate(self, length: int) -> None:
        """Drop cached entries beyond ``length``."""
        extra = self.cached_len - length
        if extra > 0:
            self.cache.crop(-extra)
