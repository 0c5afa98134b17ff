"""A deliberately naive, path-based restatement of the Graft tree builder (the test oracle).

Each candidate is identified by its token path from the root; duplicates are equal paths. The
builder must produce exactly the tree this oracle describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graft_sglang.tree.builder import GraftConfig, NodeSource
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.retrieved import RetrievedCandidates


@dataclass
class NaiveNode:
    path: tuple[int, ...]
    key: np.float32
    score: np.float32
    source: int
    first_index: int


def naive_tree(
    b: int, draft: DraftCandidates, retrieved: RetrievedCandidates, config: GraftConfig
) -> list[NaiveNode]:
    """The selected non-root nodes of request ``b``, in emission order (by first index)."""
    m = draft.num_candidates
    tokens = draft.tokens[b].tolist() + retrieved.tokens[b].tolist()
    parents = draft.parents[b].tolist() + retrieved.parents[b].tolist()
    valid = [True] * m + retrieved.valid[b].tolist()
    # float32 arithmetic in the builder's order, so that ties and near-ties rank identically.
    f32 = np.float32
    dscores = [f32(x) for x in draft.scores[b].tolist()]
    best = max(dscores) if dscores else f32(0.0)
    ranked = sorted(range(m), key=lambda i: (-dscores[i], i))
    rank = {i: r for r, i in enumerate(ranked)}
    scores: list[np.float32] = []
    keys: list[np.float32] = []
    for i in range(len(tokens)):
        if i < m:
            s = dscores[i]
            pruned = (config.threshold is not None and s < f32(config.threshold)) or (
                config.relative is not None and s < f32(config.relative) * best
            ) or (config.draft_quota is not None and rank[i] >= config.draft_quota)
        else:
            j = i - m
            anchor = int(retrieved.anchors[b, j])
            s = f32(float(retrieved.path_probs[b, j])) * f32(config.retrieval_weight) * (
                dscores[anchor] if anchor >= 0 else f32(1.0)
            )
            pruned = False
        scores.append(s)
        keys.append(s - f32(2.0) if pruned else s)
    paths: list[tuple[int, ...]] = []
    eff: list[np.float32] = []
    for i in range(len(tokens)):
        p = parents[i]
        paths.append((paths[p] if p >= 0 else ()) + (tokens[i],))
        eff.append(min(keys[i], eff[p]) if p >= 0 else keys[i])
    groups: dict[tuple[int, ...], NaiveNode] = {}
    for i in range(len(tokens)):
        if not valid[i] or (not config.top_up_pruned and eff[i] <= -1.0):
            continue
        flag = int(NodeSource.DRAFT if i < m else NodeSource.RETRIEVED)
        node = groups.get(paths[i])
        if node is None:
            groups[paths[i]] = NaiveNode(paths[i], eff[i], scores[i], flag, i)
        else:
            node.key = max(node.key, eff[i])
            node.score = max(node.score, scores[i])
            node.source |= flag
    ranked = sorted(groups.values(), key=lambda nd: (-nd.key, nd.first_index))
    chosen = ranked[: config.budget - 1]
    return sorted(chosen, key=lambda nd: nd.first_index)
