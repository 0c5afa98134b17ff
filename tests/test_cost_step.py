"""Cost-aware steps (``GraftStep.plan`` / ``size`` / ``retrieve_root``) and the offline engine
running them: any verified prefix is lossless, costs steer the width, plain steps happen."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.cost.model import CostModel
from graft_sglang.cost.policy import CostPolicy, power_of_two_sizes
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.lm import LMDrafter, truncated_copy
from graft_sglang.engine.methods import make_method
from graft_sglang.recipe import make_recipe
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree
from tests.random_inputs import eagle_draft
from tests.test_step import ContinuationLog
from tests.tiny_models import PROMPTS, VOCAB


def costs(per_node: float, draft: float = 0.1, overhead: float = 0.0) -> CostModel:
    """Verifying n nodes costs ``1 + per_node * (n - 1)`` decode steps at every batch size."""
    sizes = (1, 2, 4, 8, 16, 32)
    row = tuple(1.0 + per_node * (n - 1) for n in sizes)
    return CostModel((1, 64), sizes, (row, row), (draft, draft), (overhead, overhead))


def node_paths(tree: GraftTree, row: int = 0) -> set[tuple[int, ...]]:
    """The token path from the root of every node of ``tree``'s row (the root excluded)."""
    tokens, parents = tree.tokens[row].tolist(), tree.parents[row].tolist()
    paths: dict[int, tuple[int, ...]] = {0: ()}
    for i in range(1, len(tokens)):
        paths[i] = paths[parents[i]] + (tokens[i],)
    return {p for i, p in paths.items() if i and i < int(tree.num_real[row])}


def test_power_of_two_sizes_and_policy_checks() -> None:
    assert power_of_two_sizes(8) == (1, 2, 4, 8)
    assert power_of_two_sizes(12) == (1, 2, 4, 8, 12)
    assert CostPolicy(verify_sizes=(4, 2)).sizes(8) == (1, 2, 4)
    assert CostPolicy(fixed_size=32).sizes(8) == (1, 8)
    for kwargs, match in (({"verify_sizes": (0,)}, "verify_sizes"),
                          ({"fixed_size": 0}, "fixed_size"), ({"decay": 0.0}, "decay")):
        with pytest.raises(ValueError, match=match):
            CostPolicy(**kwargs)


@pytest.mark.parametrize("seed", range(4))
def test_root_first_retrieval_builds_the_same_tree(seed: int) -> None:
    """Retrieving at the root before drafting (``retrieve_root``) and below the draft anchors
    after it: the built tree holds the same token paths as one ``retrieve`` call."""
    gen = torch.Generator().manual_seed(seed)
    recipe = make_recipe("graft", 12, threshold=0.12, root_nodes=4, anchor_nodes=3)
    source = ContinuationLog()
    step = GraftStep(recipe, source)
    text = torch.randint(0, 8, (40,), generator=gen).tolist()
    step.start("a", text)
    roots, lens = torch.tensor([text[-1]]), torch.tensor([len(text) - 1])
    draft = eagle_draft(gen, 1, 3, 3, 8)
    whole, _ = step.build(["a"], roots, lens, draft)
    split, _ = step.build(["a"], roots, lens, draft, root=step.retrieve_root(["a"], roots))
    assert node_paths(whole) == node_paths(split)


def test_size_keeps_an_ancestor_closed_prefix_by_reach() -> None:
    gen = torch.Generator().manual_seed(0)
    recipe = make_recipe("graft", 12, threshold=0.12, cost=CostPolicy(fixed_size=4))
    step = GraftStep(recipe, ContinuationLog())
    step.start("a", [1, 2, 3, 4, 6, 1, 2, 3])
    tree, _ = step.build(["a"], torch.tensor([3]), torch.tensor([7]), eagle_draft(gen, 1, 3, 3, 8))
    sized, choice = step.size(tree, passes=2)
    assert choice is not None and choice.size == sized.budget == 4
    assert node_paths(sized) <= node_paths(tree)
    assert all(p[:-1] in node_paths(sized) or len(p) == 1 for p in node_paths(sized))
    with pytest.raises(ValueError, match="width must be in"):
        step.size(tree, passes=2, width=13)


def test_costs_steer_the_verify_width() -> None:
    """Cheap verification: the whole tree; verification that costs three steps per node: the
    root alone (a plain step). Without a cost model: the whole tree."""
    gen = torch.Generator().manual_seed(1)
    recipe = make_recipe("graft", 16, threshold=0.05, cost=CostPolicy())
    step = GraftStep(recipe, ContinuationLog())
    step.start("a", [1, 2, 3, 4, 6, 1, 2, 3])
    tree, _ = step.build(["a"], torch.tensor([3]), torch.tensor([7]),
                         eagle_draft(gen, 1, 3, 4, 8))
    assert step.size(tree, passes=3) == (tree, None)
    step.cost = costs(per_node=0.0)
    assert step.size(tree, passes=3)[0].budget == 16
    step.cost = costs(per_node=3.0)
    assert step.size(tree, passes=3)[0].budget == 1


@pytest.mark.parametrize("per_node", [0.02, 0.3, 3.0])
def test_cost_aware_engine_greedy_equals_autoregressive(
    target: torch.nn.Module, references: dict[int, list[int]], per_node: float,
) -> None:
    """Planned draft depths and sized verifies (plain steps included at high verify costs)
    keep the engine's greedy output token-identical to plain decoding."""
    engine = SpeculativeEngine(target, LMDrafter(truncated_copy(target, 1)),
                               cost=costs(per_node, draft=0.2))
    sampling = Sampling(max_new_tokens=40)
    widths: set[float] = set()
    for name in ("graft", "graft-paper"):
        method = make_method(name, budget=12, topk=3, depth=4, threshold=0.2, vocab_size=VOCAB,
                             cost=CostPolicy())
        for i, prompt in enumerate(PROMPTS):
            gen = engine.generate(prompt, method, sampling)
            assert gen.tokens == references[i], (name, per_node, i)
            widths.add(gen.verified_nodes / gen.steps)
    if per_node >= 3.0:
        assert widths == {1.0}  # every step plain: verifying more never pays
    else:
        assert max(widths) > 1.0
