"""The drafter interface of the offline engine (one request at a time).

A drafter sees the committed sequence token by token (``observe``) together with the target's
hidden states at those positions, and proposes an EAGLE-2/3 style candidate tree below the root
(the last committed token, whose target features do not exist yet: it is the bonus token of the
last verification). This is exactly the information SGLang's EAGLE worker has at the same point.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from graft_sglang.tree.draft import DraftCandidates


class Drafter(Protocol):
    """Proposes draft candidates for one request.

    feature_layers: indices into the target's ``hidden_states`` tuple (0 = embeddings,
        ``i`` = output of decoder layer ``i``) that ``observe`` must receive; ``()`` if none.
    """

    feature_layers: tuple[int, ...]

    def reset(self) -> None:
        """Forget the previous request."""

    def observe(self, token_ids: torch.Tensor, features: dict[int, torch.Tensor]) -> None:
        """Append committed tokens.

        token_ids: [T] int64, the tokens at the next T positions of the sequence.
        features:  layer -> [T, H] target hidden states at those positions (keys =
            ``feature_layers``). The engine calls it first with ``prompt[:-1]`` and the
            prefill's features (the last prompt token is the first root), then after each
            verification with ``[root, accepted drafts...]``: the step's root and every
            accepted token except the bonus, which becomes the next root.
        """

    def propose(
        self, root_token: int, topk: int, depth: int,
        stop: Callable[[int, float], bool] | None = None,
    ) -> DraftCandidates:
        """Expand the tree below ``root_token`` EAGLE-2 style (``draft_loop.expand_eagle_tree``).

        Level 0: the ``topk`` best children of the root; each later level expands the ``topk``
        best nodes of the previous level by cumulative confidence into ``topk`` children each.
        ``stop(level, best_confidence)`` returning True ends drafting after that level.
        Returns candidates of shape [1, topk + (levels - 1) * topk**2].
        """
        ...
