"""Cost-aware Graft: the cost model, reach probabilities, and the per-step decisions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from graft_sglang.cost.acceptance import (
    ScoreCalibration,
    expected_tokens,
    fit_isotonic,
    interpolate,
    reach_probabilities,
)
from graft_sglang.cost.decision import (
    allowed_sizes,
    choose_verify_size,
    plan_draft,
    selection_order,
)
from graft_sglang.cost.model import CostModel, load_cost_model, load_or_measure, measure_costs
from graft_sglang.eagle3.head import Eagle3Head, HeadConfig
from graft_sglang.engine.cost_probe import Eagle3PassProbe, VerifyProbe, engine_cost_model
from graft_sglang.tree.builder import GraftConfig, GraftTree, NodeSource, build_graft_tree
from graft_sglang.tree.layout import tree_layout
from graft_sglang.tree.subtree import keep_prefix
from graft_sglang.verify import verify_tree_greedy
from tests.random_inputs import eagle_draft, random_retrieved

TABLE = {"batch_sizes": [1, 4], "tree_sizes": [1, 4, 16],
         "verify": [[1.0, 1.6, 2.8], [1.0, 2.2, 5.2]], "draft_pass": [0.1, 0.3]}


def flat_cost(n_max: int = 64, draft: float = 0.0) -> CostModel:
    """Verify costs exactly one decode step at every width (a memory-bound GPU's ideal)."""
    return CostModel((1, 64), (1, n_max), ((1.0, 1.0), (1.0, 1.0)), (draft, draft))


def random_trees(seed: int, bs: int = 3, budget: int = 16) -> GraftTree:
    gen = torch.Generator().manual_seed(seed)
    draft = eagle_draft(gen, bs, 4, 4, 64)
    retrieved = random_retrieved(gen, bs, draft.num_candidates, 64, 12)
    roots = torch.randint(0, 64, (bs,), generator=gen)
    return build_graft_tree(roots, torch.full((bs,), 10), draft, retrieved,
                            GraftConfig(budget=budget, threshold=0.05))


def chain_tree(scores: list[float]) -> GraftTree:
    """One request, a chain below the root with the given draft scores."""
    n = len(scores) + 1
    parents = torch.arange(-1, n - 1).unsqueeze(0)
    source = torch.full((1, n), int(NodeSource.DRAFT))
    source[0, 0] = 0
    return GraftTree(torch.arange(n).unsqueeze(0), parents,
                     torch.tensor([[1.0, *scores]]), source,
                     tree_layout(parents, torch.tensor([5])))


# -- cost model ---------------------------------------------------------------------------
def test_model_interpolates_the_table() -> None:
    model = CostModel.from_dict(TABLE)
    assert model.verify_cost(1, 1) == 1.0
    assert model.verify_cost(1, 4) == pytest.approx(1.6)
    assert model.verify_cost(1, 2) == pytest.approx(1.2)  # 1 + 0.6 * (2 - 1) / 3
    assert model.verify_cost(1, 10) == pytest.approx(2.2)  # halfway from 4 to 16
    assert model.verify_cost(1, 32) == pytest.approx(4.4)  # last segment's slope, 0.1 per node
    assert model.verify_cost(2, 4) == pytest.approx(1.6 + 0.6 / 3)  # linear in bs
    assert model.verify_cost(64, 16) == pytest.approx(5.2)  # beyond the last bs: nearest
    assert model.draft_cost(2, 3) == pytest.approx(3 * (0.1 + 0.2 / 3))
    assert model.step_cost(1, 1, 0) == 1.0
    assert model.step_cost(1, 4, 2) == pytest.approx(1.6 + 0.2)


def test_seconds_tables_are_normalised_and_bad_tables_name_the_problem(tmp_path: Path) -> None:
    seconds = {**TABLE, "units": "seconds", "verify": [[0.05, 0.08, 0.14], [0.1, 0.22, 0.52]],
               "draft_pass": [0.005, 0.03]}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(seconds))
    model = load_cost_model(path)
    for got, want in zip(model.verify, ((1.0, 1.6, 2.8), (1.0, 2.2, 5.2)), strict=True):
        assert got == pytest.approx(want)
    assert model.draft_pass == pytest.approx((0.1, 0.3))
    assert model.decode_seconds == (0.05, 0.1)
    assert CostModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="never decrease"):
        CostModel.from_dict({**TABLE, "verify": [[1.0, 1.6, 1.2], [1.0, 2.2, 5.2]]})
    with pytest.raises(ValueError, match="'draft_pass'"):
        CostModel.from_dict({k: v for k, v in TABLE.items() if k != "draft_pass"})
    with pytest.raises(ValueError, match="units"):
        CostModel.from_dict({**TABLE, "units": "ms"})


def test_analytic_default_is_flat_below_the_knee_and_grows_above() -> None:
    model = CostModel.analytic(knee_tokens=64, fixed_tokens=64)
    assert model.verify_cost(1, 1) == 1.0
    assert model.verify_cost(1, 32) == pytest.approx(1.0)
    assert model.verify_cost(1, 64) == pytest.approx(1.0)
    assert model.verify_cost(16, 2) == pytest.approx(1.0)  # 32 tokens: still below the knee
    assert model.verify_cost(64, 2) == pytest.approx((64 + 128) / (64 + 64))
    assert model.verify_cost(128, 2) > model.verify_cost(64, 2)
    assert model.verify_cost(128, 4) == pytest.approx((64 + 512) / (64 + 128))


class FakeClock:
    """Virtual time: each probe call advances it by a known cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_measure_costs_recovers_a_known_machine() -> None:
    clock = FakeClock()
    step = {1: 0.05, 4: 0.08}
    # verify seconds = step * (1 + 0.1 (n - 1)), except n = 3 costs more than n = 4.
    slow = {3: 0.5}

    def run_verify(bs: int, n: int) -> None:
        clock.now += step[bs] * (1 + slow.get(n, 0.1 * (n - 1)))

    def run_draft(bs: int) -> None:
        clock.now += 0.2 * step[bs]

    model = measure_costs(run_verify, run_draft, batch_sizes=(1, 4), tree_sizes=(1, 2, 3, 4, 8),
                          rounds=3, clock=clock)
    for row in model.verify:
        assert row == pytest.approx((1.0, 1.1, 1.3, 1.3, 1.7))  # n = 3 padded to width 4
    assert model.draft_pass == pytest.approx((0.2, 0.2))
    assert model.decode_seconds == pytest.approx((0.05, 0.08))
    assert model.evidence["verify_ratios_raw"][0][2] == pytest.approx(1.5)


def test_calibration_on_a_tiny_model_gives_monotone_costs() -> None:
    from tests.tiny_models import tiny_llama

    torch.set_num_threads(1)
    target = tiny_llama(0)
    config = HeadConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=64, vocab_size=32, draft_vocab_size=16)
    head = Eagle3Head(config, torch.randn(32, 32)).eval()
    probe = VerifyProbe(target, context_len=16, feature_layers=(1,))
    model = measure_costs(probe, Eagle3PassProbe(head, context_len=16, topk=2),
                          batch_sizes=(1, 2), tree_sizes=(1, 2, 4, 8), rounds=2)
    for row in model.verify:
        assert row[0] == 1.0
        assert all(b >= a for a, b in itertools.pairwise(row))
    assert all(c > 0 for c in model.draft_pass)
    assert all(s > 0 for s in model.decode_seconds)
    # The probe leaves the cache as it found it: the same call twice gives the same shapes.
    assert probe(2, 3).shape == probe(2, 3).shape == (2, 3)
    assert probe._cache.get_seq_length() == 16


def test_engine_calibration_is_cached_per_machine_and_model(tmp_path: Path) -> None:
    from tests.tiny_models import tiny_llama

    torch.set_num_threads(1)
    target = tiny_llama(0)
    cache = tmp_path / "engine-costs.json"
    first = engine_cost_model(target, cache=cache, batch_sizes=(1, 2), tree_sizes=(1, 2, 4),
                              context_len=8, rounds=1)
    assert cache.is_file() and first.source == "measured"
    again = engine_cost_model(target, cache=cache, batch_sizes=(1, 2), tree_sizes=(1, 2, 4),
                              context_len=8, rounds=1)
    assert again == first  # read back, not measured again (timings would differ)
    other = engine_cost_model(tiny_llama(0, layers=1), cache=cache, batch_sizes=(1, 2),
                              tree_sizes=(1, 2, 4), context_len=8, rounds=1)
    assert other.evidence["key"]["model"] != first.evidence["key"]["model"]


def test_cached_calibration_is_reused_only_for_the_same_key(tmp_path: Path) -> None:
    calls = []

    def measure() -> CostModel:
        calls.append(1)
        return CostModel.from_dict(TABLE)

    path = tmp_path / "cache.json"
    first = load_or_measure(path, {"machine": "a", "sizes": (1, 4)}, measure)
    again = load_or_measure(path, {"machine": "a", "sizes": [1, 4]}, measure)
    assert len(calls) == 1 and again == first
    load_or_measure(path, {"machine": "b"}, measure)
    assert len(calls) == 2


# -- reach probabilities ------------------------------------------------------------------
def test_interpolate_and_per_source_calibration() -> None:
    xs, ys = torch.tensor([0.2, 0.6]), torch.tensor([0.1, 0.5])
    x = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0])
    assert interpolate(x, xs, ys).tolist() == pytest.approx([0.1, 0.1, 0.3, 0.5, 0.5])
    cal = ScoreCalibration({"retrieved": ((0.0, 1.0), (0.0, 0.5))})
    scores = torch.tensor([[1.0, 0.8, 0.8, 0.8, 0.0]])
    source = torch.tensor([[0, int(NodeSource.DRAFT), int(NodeSource.RETRIEVED),
                            int(NodeSource.DRAFT | NodeSource.RETRIEVED),
                            int(NodeSource.FILLER)]])
    assert cal.apply(scores, source)[0].tolist() == pytest.approx([1.0, 0.8, 0.4, 0.8, 0.0])
    assert ScoreCalibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError, match="nondecreasing"):
        ScoreCalibration({"draft": ((0.0, 1.0), (0.5, 0.2))})


def test_isotonic_fit_recovers_a_monotone_acceptance_curve() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(20000, generator=gen)
    accepted = torch.rand(20000, generator=gen) < scores ** 2  # over-confident scores
    xs, ys = fit_isotonic(scores, accepted, bins=10)
    assert list(ys) == sorted(ys) and list(xs) == sorted(xs)
    assert torch.tensor(ys).sub(torch.tensor(xs) ** 2).abs().max() < 0.04
    # Pooling: rates 0.9 then 0.1 over increasing scores merge into one block.
    assert fit_isotonic([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], bins=2) == ((0.5,), (0.5,))


def test_reach_is_capped_by_ancestors_and_sums_to_the_expected_length() -> None:
    cal = ScoreCalibration({"draft": ((0.0, 0.5, 1.0), (0.0, 0.2, 1.0))})
    tree = chain_tree([0.9, 0.5, 0.6])  # a child scored above its parent
    reach = reach_probabilities(tree, cal)
    assert reach[0].tolist() == pytest.approx([1.0, 0.84, 0.2, 0.2])
    assert expected_tokens(reach).item() == pytest.approx(1 + 0.84 + 0.2 + 0.2)
    keep = torch.tensor([[True, True, False, False]])
    assert expected_tokens(reach, keep).item() == pytest.approx(1.84)
    trees = random_trees(1)
    reach = reach_probabilities(trees)
    parents = trees.parents.clamp(min=0)
    assert bool((reach <= torch.gather(reach, 1, parents) + 1e-7).all())
    filler = (trees.source & int(NodeSource.FILLER)) != 0
    assert bool((reach[filler] == 0).all()) and bool((reach[:, 0] == 1).all())


# -- decisions ----------------------------------------------------------------------------
def test_plain_step_when_the_expected_gain_is_below_the_cost() -> None:
    reach = reach_probabilities(chain_tree([0.05, 0.01, 0.001]))
    choice = choose_verify_size(reach, CostModel.from_dict(TABLE))
    assert choice.size == 1 and choice.rate == pytest.approx(1.0)
    # The same tree, with drafting already paid for, still verifies nothing extra.
    assert choose_verify_size(reach, CostModel.from_dict(TABLE), sunk=0.3).size == 1


def test_full_tree_when_scores_are_near_one_and_verify_is_cheap() -> None:
    trees = random_trees(2, budget=16)
    confident = GraftTree(trees.tokens, trees.parents, torch.full_like(trees.scores, 0.99),
                          trees.source & ~int(NodeSource.FILLER), trees.layout)
    choice = choose_verify_size(reach_probabilities(confident), flat_cost())
    assert choice.size == 16
    assert choice.expected.tolist() == pytest.approx(
        reach_probabilities(confident).sum(dim=1).tolist())


def test_size_is_taken_from_the_allowed_set() -> None:
    assert allowed_sizes((4, 8, 64), 16) == [1, 4, 8]
    assert allowed_sizes(None, 3) == [1, 2, 3]
    trees = random_trees(3, budget=16)
    reach = reach_probabilities(trees)
    model = CostModel((1, 4), (1, 2, 16), ((1.0, 1.05, 1.4), (1.0, 1.05, 1.4)), (0.1, 0.1))
    for sizes in ((4,), (2, 8), (1, 6, 12, 32)):
        choice = choose_verify_size(reach, model, sizes)
        assert choice.size in allowed_sizes(sizes, 16)
        every = {n: choose_verify_size(reach, model, [n]).rate for n in allowed_sizes(sizes, 16)}
        assert choice.rate == pytest.approx(max(every.values()))


@pytest.mark.parametrize("seed", range(4))
def test_every_prefix_of_the_selection_order_is_ancestor_closed(seed: int) -> None:
    trees = random_trees(seed, bs=4, budget=24)
    order = selection_order(reach_probabilities(trees))
    assert bool((order[:, 0] == 0).all())
    for n in range(1, 25):
        kept = torch.zeros_like(trees.tokens, dtype=torch.bool).scatter_(1, order[:, :n], True)
        parent_kept = torch.gather(kept, 1, trees.parents.clamp(min=0))
        assert bool((~kept | parent_kept).all())
        sub = keep_prefix(trees, order, n)
        assert sub.budget == n
        assert bool((sub.parents[:, 1:] < torch.arange(1, n)).all())
        assert torch.equal(sub.layout.positions[:, 0], trees.layout.positions[:, 0])
    with pytest.raises(ValueError, match="ancestor-closed"):
        deepest = trees.layout.depth.argmax(dim=1, keepdim=True)
        bad = torch.cat([torch.zeros_like(deepest), deepest], dim=1)
        rest = torch.ones_like(trees.tokens, dtype=torch.bool).scatter_(1, bad, False)
        others = torch.arange(24).expand(4, 24)[rest].view(4, 22)
        keep_prefix(trees, torch.cat([bad, others], dim=1), 2)


def test_verifying_a_prefix_accepts_the_full_trees_path_within_it() -> None:
    trees = random_trees(5, bs=4, budget=16)
    gen = torch.Generator().manual_seed(7)
    order = selection_order(reach_probabilities(trees))
    # A target that follows each tree's best-scored path for a while, then disagrees.
    target = torch.randint(0, 64, trees.tokens.shape, generator=gen)
    for b in range(4):
        node = 0
        for _ in range(3):
            children = [c for c in range(16) if int(trees.parents[b, c]) == node]
            if not children:
                break
            best = max(children, key=lambda c: float(trees.scores[b, c]))
            target[b, node] = trees.tokens[b, best]
            node = best
    full = verify_tree_greedy(trees.tokens, trees.layout, target, 16)
    for n in (1, 2, 5, 9):
        sub = keep_prefix(trees, order, n)
        idx = torch.sort(order[:, :n], dim=1).values
        res = verify_tree_greedy(sub.tokens, sub.layout, torch.gather(target, 1, idx), n)
        for b in range(4):
            path = full.accept_index[b, : int(full.accept_length[b]) + 1].tolist()
            path = [i - b * 16 for i in path]
            inside = []
            for node in path:
                if node not in idx[b].tolist():
                    break
                inside.append(node)
            got = [int(idx[b, i - b * n]) for i in res.accept_index[b,
                                                                   : int(res.accept_length[b]) + 1]]
            assert got == inside
            assert res.accepted_tokens(b)[-1] == int(target[b, inside[-1]])


def test_decisions_are_deterministic() -> None:
    trees = random_trees(6, bs=8, budget=32)
    model = CostModel.from_dict(TABLE)
    first = choose_verify_size(reach_probabilities(trees), model, (1, 2, 4, 8, 16, 32), 0.2)
    clone = GraftTree(trees.tokens.clone(), trees.parents.clone(), trees.scores.clone(),
                      trees.source.clone(), trees.layout)
    again = choose_verify_size(reach_probabilities(clone), model, (1, 2, 4, 8, 16, 32), 0.2)
    assert (first.size, first.cost, first.rate) == (again.size, again.cost, again.rate)
    assert torch.equal(first.order, again.order)
    args = dict(level0=torch.rand(8, 4, generator=torch.Generator().manual_seed(0)),
                retrieved=torch.full((8, 3), 0.5), retrieved_depth=torch.tensor([[1, 2, 3]] * 8),
                retrieved_valid=torch.ones(8, 3, dtype=torch.bool))
    plans = [plan_draft(model, **args, level_options=range(6), decay=0.6, level0_passes=0,
                        budget=16, sizes=(1, 4, 8, 16)) for _ in range(2)]
    assert plans[0] == plans[1]


def _chain_retrieval(bs: int, length: int, prob: float) -> dict:
    depth = torch.arange(1, length + 1).expand(bs, length)
    return dict(retrieved=prob ** depth.float(), retrieved_depth=depth,
                retrieved_valid=torch.ones(bs, length, dtype=torch.bool))


def test_no_draft_when_a_long_confident_retrieved_match_is_there() -> None:
    model = CostModel((1,), (1, 4, 16), ((1.0, 1.3, 1.9),), (0.12,))
    plan = plan_draft(model, torch.tensor([[0.3, 0.1, 0.05, 0.02]]),
                      **_chain_retrieval(1, 12, 0.95), level_options=range(7), decay=0.6,
                      level0_passes=1, budget=16, sizes=(1, 4, 8, 16))
    assert plan.levels == 0 and plan.passes == 0 and plan.size > 1
    # The same draft against a short, weak match is worth drafting.
    plan = plan_draft(model, torch.tensor([[0.3, 0.1, 0.05, 0.02]]),
                      **_chain_retrieval(1, 1, 0.05), level_options=range(7), decay=0.6,
                      level0_passes=1, budget=16, sizes=(1, 4, 8, 16))
    assert plan.levels >= 1 and plan.passes == plan.levels


def test_drafts_deep_when_the_draft_is_confident_and_nothing_was_retrieved() -> None:
    plan = plan_draft(flat_cost(draft=0.05), torch.tensor([[0.9, 0.05, 0.02, 0.01]]),
                      **_chain_retrieval(1, 1, 0.01), level_options=range(7), decay=0.9,
                      level0_passes=0, budget=32)
    assert plan.levels == 6 and plan.passes == 5


def test_plain_step_when_neither_source_has_anything() -> None:
    plan = plan_draft(CostModel.from_dict(TABLE), torch.tensor([[0.04, 0.02, 0.01, 0.01]] * 2),
                      **_chain_retrieval(2, 2, 0.02), level_options=(0, 1, 3, 5), decay=0.5,
                      level0_passes=1, budget=16)
    assert (plan.levels, plan.size, plan.cost, plan.rate) == (0, 1, 1.0, 2.0)


def test_drafting_what_retrieval_already_proposes_pays_nothing() -> None:
    # Retrieval's mass per depth equals the predicted draft's: the two mostly propose the same
    # tokens, so the larger source counts, not the sum.
    level0 = torch.tensor([[0.5, 0.0, 0.0, 0.0]])
    plan = plan_draft(flat_cost(draft=0.05), level0, **_chain_retrieval(1, 6, 0.5),
                      level_options=range(7), decay=0.5, level0_passes=0, budget=32)
    assert plan.levels == 0 and plan.expected == pytest.approx(1 + sum(0.5 ** d
                                                                       for d in range(1, 7)))
