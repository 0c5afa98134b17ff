"""Drafting with a small causal LM that shares the target's tokenizer (or a truncated copy of
the target, the "bad drafter": its first k layers, the final norm and the LM head)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from graft_sglang.engine.cached_lm import CachedLM
from graft_sglang.engine.draft_loop import expand_eagle_tree
from graft_sglang.tree.draft import DraftCandidates


class LMDrafter:
    """Implements ``Drafter`` with a causal LM and its own KV cache of the committed text."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, model: torch.nn.Module, name: str = "draft-lm") -> None:
        self.lm = CachedLM(model)
        self.name = name
        self.forward_count = 0  # draft forward passes run so far
        self._pending: list[int] = []  # observed, not yet in the cache

    def reset(self) -> None:
        self.lm.reset()
        self._pending = []

    def observe(self, token_ids: torch.Tensor, features: dict[int, torch.Tensor]) -> None:
        # Cached by the next ``propose`` together with its root: one draft forward per step.
        self._pending.extend(token_ids.tolist())

    def propose(
        self, root_token: int, topk: int, depth: int,
        stop: Callable[[int, float], bool] | None = None,
    ) -> DraftCandidates:
        start = self.lm.cached_len
        fed = [*self._pending, root_token]
        logits, _ = self.lm.forward(torch.tensor(fed), torch.arange(start, start + len(fed)),
                                    last_logits_only=True)
        self.forward_count += 1
        self._pending = []
        base = self.lm.cached_len - 1  # committed text; the root and the tree are dropped later
        root_pos = base
        fed_parent = [-1]  # feeding order: slot 0 = root
        fed_depth = [0]

        def next_probs(tokens: torch.Tensor, parent_slots: torch.Tensor) -> torch.Tensor:
            k, fed = tokens.shape[0], len(fed_parent)
            # Each new node sees the committed text, then its ancestors among fed slots.
            visible = torch.zeros(k, base + fed, dtype=torch.bool)
            visible[:, :base] = True
            for j, p in enumerate(parent_slots.tolist()):
                while p >= 0:
                    visible[j, base + p] = True
                    p = fed_parent[p]
            depths = [fed_depth[p] + 1 for p in parent_slots.tolist()]
            logits, _ = self.lm.forward(
                tokens, torch.tensor(depths) + root_pos,
                new_visible=torch.eye(k, dtype=torch.bool), cached_visible=visible,
            )
            fed_parent.extend(parent_slots.tolist())
            fed_depth.extend(depths)
            self.forward_count += 1
            return torch.softmax(logits, dim=-1)

        try:
            return expand_eagle_tree(torch.softmax(logits[-1], dim=-1), next_probs, topk, depth,
                                     stop)
        finally:
            self.lm.truncate(base)


def truncated_copy(model: torch.nn.Module, num_layers: int) -> torch.nn.Module:
    """The target's first ``num_layers`` decoder layers with its norm and LM head (weights
    shared, not copied; the target itself is left untouched)."""
    layers = model.model.layers
    if not 1 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [1, {len(layers)}], got {num_layers}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[:num_layers]
    inner = copy.copy(model.model)
    inner._modules = dict(model.model._modules)  # own module table: the target keeps its layers
    inner.layers = torch.nn.ModuleList(list(layers)[:num_layers])
    inner.config = config
    draft = copy.copy(model)
    draft._modules = dict(model._modules)
    draft.model = inner
    draft.config = config
    return draft
