"""Drafting with the EAGLE-3 head (``graft_sglang.eagle3``): the offline engine's default drafter.

The head keeps its own KV cache of committed pairs (target features at position ``j``, token at
``j + 1``), as SGLang's EAGLE-3 worker does. ``propose`` runs step 0 on (features of the last
committed position, root token) and expands the tree EAGLE-2 style with
``draft_loop.expand_eagle_tree``; each tree node attends to the committed pairs, step 0 and its
ancestors. Draft-vocabulary probabilities are scattered to the target vocabulary through ``d2t``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from graft_sglang.eagle3.export import WEIGHTS_DIR, load_head
from graft_sglang.eagle3.head import Eagle3Head, masked_attention
from graft_sglang.engine.draft_loop import expand_eagle_tree
from graft_sglang.tree.draft import DraftCandidates


class Eagle3Drafter:
    """Implements ``Drafter`` with an ``Eagle3Head``; one request at a time."""

    def __init__(self, head: Eagle3Head, feature_layers: tuple[int, ...],
                 weights_dir: Path | None = None) -> None:
        self.head = head.eval().requires_grad_(False)
        self.feature_layers = tuple(feature_layers)
        self.weights_dir = weights_dir  # where the head came from (its calibration.json)
        self.forward_count = 0  # head forward passes run so far
        self.reset()

    def reset(self) -> None:
        c = self.head.config
        self._keys = torch.zeros(0, c.num_key_value_heads, c.head_dim)
        self._values = torch.zeros(0, c.num_key_value_heads, c.head_dim)
        self._seq_len = 0  # committed tokens observed
        self._pending: torch.Tensor | None = None  # [3H] features of the last observed position

    def _fused(self, features: dict[int, torch.Tensor]) -> torch.Tensor:
        return torch.cat([features[layer].float() for layer in self.feature_layers], dim=-1)

    def _step(self, hidden: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
              visible_new: torch.Tensor, visible_cached: torch.Tensor,
              extra: tuple[torch.Tensor, torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run n rows that see the committed cache (``visible_cached`` [n, P]), the ``extra``
        tree keys/values (``visible_new[:, :E]``) and each other (``visible_new[:, E:]``).
        Returns (hidden [n, H], keys [n, kv, d], values [n, kv, d])."""
        saved: dict[str, torch.Tensor] = {}

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            saved["k"], saved["v"] = k, v
            keys = [self._keys, *(extra[:1] if extra else ()), k]
            values = [self._values, *(extra[1:] if extra else ()), v]
            visible = torch.cat([visible_cached, visible_new], dim=1)
            return masked_attention(q, torch.cat(keys), torch.cat(values), visible)

        out = self.head.step(hidden, tokens, positions, attend)
        self.forward_count += 1
        return out, saved["k"], saved["v"]

    @torch.no_grad()
    def observe(self, token_ids: torch.Tensor, features: dict[int, torch.Tensor]) -> None:
        t = token_ids.shape[0]
        if t == 0:
            return
        feats = self._fused(features)  # [T, 3H]
        start = self._seq_len
        # Pair (features at p - 1, token at p) for every new position p >= 1.
        hidden = feats[:-1] if self._pending is None else torch.cat(
            [self._pending[None], feats[:-1]])
        tokens = token_ids[1:] if self._pending is None else token_ids
        first = start + 1 if self._pending is None else start
        self._seq_len += t
        self._pending = feats[-1]
        n = tokens.shape[0]
        if n == 0:
            return
        cached = self._keys.shape[0]
        _, k, v = self._step(hidden, tokens, torch.arange(first - 1, first - 1 + n),
                             torch.ones(n, n, dtype=torch.bool).tril(),
                             torch.ones(n, cached, dtype=torch.bool))
        self._keys = torch.cat([self._keys, k])
        self._values = torch.cat([self._values, v])

    def _target_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, H] -> draft distribution scattered onto the target vocabulary [n, V]."""
        probs = torch.softmax(self.head.logits(hidden).float(), dim=-1)
        full = torch.zeros(hidden.shape[0], self.head.config.vocab_size)
        return full.index_copy_(1, self.head.draft_to_target, probs)

    @torch.no_grad()
    def propose(
        self, root_token: int, topk: int, depth: int,
        stop: Callable[[int, float], bool] | None = None,
    ) -> DraftCandidates:
        c = self.head.config
        # Without any observed position (a one-token prompt) step 0 sees zero features.
        pending = self._pending if self._pending is not None else torch.zeros(
            c.num_aux * c.hidden_size)
        cached = self._keys.shape[0]
        root_pos = self._seq_len - 1
        hidden0, k0, v0 = self._step(pending[None], torch.tensor([root_token]),
                                     torch.tensor([root_pos]),
                                     torch.ones(1, 1, dtype=torch.bool),
                                     torch.ones(1, cached, dtype=torch.bool))
        # Fed slots in feeding order; slot 0 = step 0 (the root's pair).
        slot_hidden, slot_keys, slot_values = [hidden0], [k0], [v0]
        slot_parent, slot_pos = [-1], [root_pos]

        def next_probs(tokens: torch.Tensor, parent_slots: torch.Tensor) -> torch.Tensor:
            n, fed = tokens.shape[0], len(slot_parent)
            visible_tree = torch.zeros(n, fed, dtype=torch.bool)
            for row, p in enumerate(parent_slots.tolist()):
                while p >= 0:
                    visible_tree[row, p] = True
                    p = slot_parent[p]
            parents = parent_slots.tolist()
            hidden, k, v = self._step(
                torch.cat(slot_hidden)[parent_slots], tokens,
                torch.tensor([slot_pos[p] + 1 for p in parents]),
                torch.cat([visible_tree, torch.eye(n, dtype=torch.bool)], dim=1),
                torch.ones(n, cached, dtype=torch.bool),
                extra=(torch.cat(slot_keys), torch.cat(slot_values)),
            )
            slot_hidden.append(hidden)
            slot_keys.append(k)
            slot_values.append(v)
            slot_parent.extend(parents)
            slot_pos.extend(slot_pos[p] + 1 for p in parents)
            return self._target_probs(hidden)

        return expand_eagle_tree(self._target_probs(hidden0)[0], next_probs, topk, depth, stop)


def load_eagle3_drafter(target: torch.nn.Module, path: Path | None = None) -> Eagle3Drafter:
    """The committed head for the embedded target (or the checkpoint at ``path``), sharing the
    target's token embedding. Raises ``FileNotFoundError`` if the weights are missing."""
    path = Path(path) if path is not None else WEIGHTS_DIR
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"no EAGLE-3 head at {path}")
    head, feature_layers = load_head(path, target.get_input_embeddings().weight)
    return Eagle3Drafter(head, feature_layers, path)
