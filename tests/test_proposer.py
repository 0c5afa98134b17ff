"""GraftProposer: retrieval anchors at the root and at kept draft leaves, commit, finish."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from graft_sglang.proposer import GraftProposer, RetrievalPlan, draft_path, kept_draft_leaves
from graft_sglang.retrieval.base import Continuations
from graft_sglang.tree.builder import GraftConfig, NodeSource
from graft_sglang.tree.draft import DraftCandidates


class ContinuationLog:
    """A minimal RetrievalSource: proposes the tokens that followed the last occurrence of the
    query's final token in the request's own text, and records every call."""

    def __init__(self) -> None:
        self.text: dict[str, list[int]] = {}
        self.queries: list[tuple[str, tuple[int, ...], int]] = []

    def start_request(self, rid: str, prompt: Sequence[int]) -> None:
        self.text[rid] = list(prompt)

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        self.text[rid].extend(tokens)

    def finish_request(self, rid: str) -> None:
        del self.text[rid]

    def propose(self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16) -> Continuations:
        self.queries.append((rid, tuple(suffix), max_nodes))
        seq = self.text[rid] + list(suffix)
        last = seq[-1]
        for i in range(len(seq) - 2, -1, -1):
            if seq[i] == last:
                follow = seq[i + 1 : i + 1 + max_nodes]
                return Continuations.chain(follow, [0.9] * len(follow))
        return Continuations()


DRAFT = DraftCandidates(
    tokens=torch.tensor([[4, 5, 6, 7, 8, 9]]),
    parents=torch.tensor([[-1, -1, 0, 0, 1, 1]]),
    scores=torch.tensor([[0.7, 0.2, 0.5, 0.1, 0.15, 0.01]]),
)


def test_kept_leaves_and_paths() -> None:
    cfg = GraftConfig(budget=8, threshold=0.12)
    # kept: 0 (0.7), 1 (0.2), 2 (0.5), 4 (0.15); leaves of the kept tree: 2, 4.
    assert kept_draft_leaves(DRAFT, cfg, 3) == [[2, 4]]
    assert kept_draft_leaves(DRAFT, cfg, 1) == [[2]]
    assert draft_path(DRAFT, 0, 2) == [4, 6]
    assert draft_path(DRAFT, 0, 4) == [5, 8]


def test_build_and_commit() -> None:
    source = ContinuationLog()
    proposer = GraftProposer(GraftConfig(budget=10, threshold=0.12), source,
                             RetrievalPlan(root_nodes=4, draft_anchors=1, anchor_nodes=3))
    proposer.start("a", [1, 2, 3, 4, 6, 1, 2, 3])
    tree = proposer.build(["a"], torch.tensor([3]), torch.tensor([7]), DRAFT)
    # Root query continues "3" with [4, 6, 1, 2]; the anchor query continues "3 4 6" with
    # [1, 2, 3]. The retrieved 4 and 4->6 merge into the draft nodes.
    assert source.queries == [("a", (), 4), ("a", (4, 6), 3)]
    paths = {}
    toks, pars, src = tree.tokens[0].tolist(), tree.parents[0].tolist(), tree.source[0].tolist()
    for i in range(1, 10):
        paths[i] = (paths.get(pars[i], ()) if pars[i] else ()) + (toks[i],)
    by_path = {paths[i]: src[i] for i in range(1, 10)}
    both = int(NodeSource.DRAFT | NodeSource.RETRIEVED)
    assert by_path[(4,)] == both and by_path[(4, 6)] == both
    assert by_path[(4, 6, 1)] == int(NodeSource.RETRIEVED)  # root and anchor chains merged
    assert (4, 6, 1, 2) in by_path
    proposer.commit("a", [4, 6])
    assert source.text["a"][-2:] == [4, 6]
    proposer.finish("a")
    assert "a" not in source.text


def test_without_retrieval_is_draft_only() -> None:
    proposer = GraftProposer(GraftConfig(budget=5, threshold=None), None, RetrievalPlan())
    tree = proposer.build(["x"], torch.tensor([3]), torch.tensor([7]), DRAFT)
    assert tree.tokens[0, 1:].tolist() == [4, 5, 6, 8]


def test_errors() -> None:
    with pytest.raises(ValueError, match="root_nodes"):
        RetrievalPlan(root_nodes=-1)
    proposer = GraftProposer(GraftConfig(budget=5), None, RetrievalPlan())
    with pytest.raises(ValueError, match="request ids"):
        proposer.build(["x", "y"], torch.tensor([3]), torch.tensor([7]), DRAFT)
