"""GraftStep: anchors at kept draft leaves without host reads, the batched retrieval call of
every source, the build, and the request bookkeeping."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import pytest
import torch

from graft_sglang.recipe import make_recipe
from graft_sglang.retrieval.base import Continuations
from graft_sglang.retrieval.suffix import SuffixRetriever, draft_path
from graft_sglang.step import GraftStep, draft_anchors
from graft_sglang.tree.builder import GraftConfig, NodeSource, prune_mask
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.retrieved import RetrievedCandidates, pack_retrieved
from tests.random_inputs import eagle_draft


class ContinuationLog:
    """A minimal packed retrieval source: proposes the tokens that followed the last occurrence
    of the query's final token in the request's own text, and records every query."""

    def __init__(self) -> None:
        self.text: dict[str, list[int]] = {}
        self.queries: list[tuple[str, tuple[int, ...], int]] = []

    def start_request(self, rid: str, prompt: Sequence[int], tenant: Hashable = None) -> None:
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

    def retrieve_packed(self, rids: Sequence[str], anchors: torch.Tensor,
                        draft_tokens: torch.Tensor, draft_parents: torch.Tensor,
                        root_nodes: int, anchor_nodes: int, max_slots: int,
                        device: torch.device | str = "cpu") -> RetrievedCandidates:
        tries = []
        for b, rid in enumerate(rids):
            row = [(-1, self.propose(rid, (), root_nodes))]
            for node in anchors[b].tolist():
                if node >= 0:
                    path = draft_path(draft_tokens[b].tolist(), draft_parents[b].tolist(), node)
                    row.append((node, self.propose(rid, path, anchor_nodes)))
            tries.append(row)
        return pack_retrieved(tries, draft_tokens.shape[1], max_slots, device)


DRAFT = DraftCandidates(
    tokens=torch.tensor([[4, 5, 6, 7, 8, 9]]),
    parents=torch.tensor([[-1, -1, 0, 0, 1, 1]]),
    scores=torch.tensor([[0.7, 0.2, 0.5, 0.1, 0.15, 0.01]]),
)


def reference_anchors(draft: DraftCandidates, config: GraftConfig, count: int,
                      quotas: torch.Tensor | None) -> list[list[int]]:
    """Kept leaves per request, best first, by walking the tree in Python."""
    kept = (~prune_mask(draft.scores, config, quotas)).tolist()
    out = []
    for b in range(draft.batch_size):
        parents, scores = draft.parents[b].tolist(), draft.scores[b].tolist()
        inner = {p for i, p in enumerate(parents) if kept[b][i] and p >= 0}
        leaves = [i for i in range(len(parents)) if kept[b][i] and i not in inner]
        out.append(sorted(leaves, key=lambda i: (-scores[i], i))[:count])
    return out


def test_anchors_are_the_kept_leaves_best_first() -> None:
    cfg = GraftConfig(budget=8, threshold=0.12)
    # kept: 0 (0.7), 1 (0.2), 2 (0.5), 4 (0.15); leaves of the kept tree: 2, 4.
    assert draft_anchors(DRAFT, cfg, 3).tolist() == [[2, 4, -1]]
    assert draft_anchors(DRAFT, cfg, 1).tolist() == [[2]]
    assert draft_anchors(DRAFT, cfg, 0).shape == (1, 0)
    assert draft_anchors(DRAFT, cfg, 9).shape == (1, 6)  # at most M columns


@pytest.mark.parametrize("seed", range(6))
def test_anchors_equal_a_tree_walk(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    draft = eagle_draft(gen, 5, 3, 4, 30)
    quotas = torch.randint(0, draft.num_candidates + 2, (5,), generator=gen)
    for config, q in ((GraftConfig(budget=16, threshold=0.05), None),
                      (GraftConfig(budget=16, threshold=None), quotas)):
        for count in (1, 3):
            got = draft_anchors(draft, config, count, q).tolist()
            want = reference_anchors(draft, config, count, q)
            assert [[a for a in row if a >= 0] for row in got] == want
            assert all(row[len(w):] == [-1] * (len(row) - len(w))
                       for row, w in zip(got, want, strict=True))


def graft_step(source: ContinuationLog | None, budget: int = 10, root: int = 4,
               anchors: int = 1, anchor_nodes: int = 3) -> GraftStep:
    recipe = make_recipe("graft", budget, threshold=0.12, root_nodes=root,
                         draft_anchors=anchors, anchor_nodes=anchor_nodes,
                         retrieval=None if source is not None else "successor")
    if source is None:
        return GraftStep.for_recipe(recipe, vocab_size=20)
    return GraftStep(recipe, source)


def test_build_and_commit() -> None:
    source = ContinuationLog()
    step = graft_step(source)
    step.start("a", [1, 2, 3, 4, 6, 1, 2, 3])
    tree, mask = step.build(["a"], torch.tensor([3]), torch.tensor([7]), DRAFT)
    assert mask is None
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
    step.commit("a", [4, 6])
    assert source.text["a"][-2:] == [4, 6]
    step.finish("a")
    assert "a" not in source.text


def test_sources_answer_side_by_side() -> None:
    """graft with both sources: the suffix slots, then the successor walk's, whose own links
    are shifted past the suffix slots."""
    recipe = make_recipe("graft", 10, threshold=0.12, root_nodes=4, anchor_nodes=3,
                         retrieval="both")
    source = ContinuationLog()
    step = GraftStep.for_recipe(recipe, source, vocab_size=20)
    step.start("a", [1, 2, 3, 4, 6, 1, 2, 3])
    step.observe_verified(torch.arange(20), torch.randn(20, 20))
    got = step.retrieve(["a"], torch.tensor([3]), DRAFT)
    suffix_slots = recipe.plan.max_slots
    assert got.num_slots == suffix_slots + step.successor.num_slots
    walk = step.successor.propose(torch.tensor([3]), recipe.successor_widths, 6)
    shifted = torch.where(walk.parents >= 6, walk.parents + suffix_slots, walk.parents)
    assert torch.equal(got.parents[:, suffix_slots:], shifted)
    assert torch.equal(got.tokens[:, suffix_slots:], walk.tokens)


def test_the_one_copy_happens_only_with_anchors() -> None:
    """Without draft anchors (or without a suffix source) the query holds no draft values."""
    step = graft_step(ContinuationLog(), anchors=0)
    query = step.query(["a"], torch.tensor([3]), DRAFT)
    assert query.anchors.shape == (1, 0) and not bool(query.draft_tokens.any())
    step = graft_step(ContinuationLog())
    query = step.query(["a"], torch.tensor([3]), DRAFT)
    assert query.anchors.tolist() == [[2]] and torch.equal(query.draft_tokens, DRAFT.tokens)
    assert graft_step(None).query(["a"], torch.tensor([3]), DRAFT).anchors.shape == (1, 0)


def test_without_retrieval_is_draft_only() -> None:
    step = GraftStep(make_recipe("dense", 5))
    tree, _ = step.build(["x"], torch.tensor([3]), torch.tensor([7]), DRAFT)
    assert tree.tokens[0, 1:].tolist() == [4, 5, 6, 8]


def test_errors() -> None:
    step = GraftStep(make_recipe("dense", 5))
    with pytest.raises(ValueError, match="request ids"):
        step.build(["x", "y"], torch.tensor([3]), torch.tensor([7]), DRAFT)
    with pytest.raises(ValueError, match="needs a suffix source"):
        GraftStep(make_recipe("graft", 8))
    with pytest.raises(ValueError, match="takes no successor source"):
        GraftStep(make_recipe("graft", 8), SuffixRetriever(), object())
    with pytest.raises(ValueError, match="vocabulary size"):
        GraftStep.for_recipe(make_recipe("graft-paper", 8))
