"""One recipe per mode: the offline engine and the SGLang plugin build the same recipe from their
own knobs, and their steps build the same tree from the same draft and retrieval state."""

from __future__ import annotations

from array import array

import pytest
import torch

pytest.importorskip("sglang")

from sglang.srt.managers.schedule_batch import Req
from sglang.srt.sampling.sampling_params import SamplingParams

from graft_sglang.engine.decode import Generation, SpeculativeEngine
from graft_sglang.engine.methods import make_method
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.plugin.verify_input import step_tree
from graft_sglang.plugin.worker import GraftState, all_candidates
from graft_sglang.recipe import MODES, PAPER_MODES, RECIPES, make_recipe
from graft_sglang.stages import StagePolicy
from graft_sglang.tree.builder import NodeSource
from graft_sglang.tree.draft import DraftCandidates, from_eagle_draft_loop
from tests.random_inputs import eagle_loop_lists
from tests.tiny_models import VOCAB, tiny_llama

# (mode, plugin settings, the engine's make_method keywords): the knobs both sides expose.
SHARED = [
    ("graft", {}, {}),
    ("graft", {"threshold": 0.3}, {"threshold": 0.3}),
    ("graft", {"retrieval": "both"}, {"retrieval": "both"}),
    ("graft", {"draft_anchors": 2}, {"draft_anchors": 2}),
    ("graft-paper", {}, {}),
    ("graft-paper", {"retrieval": "both"}, {"retrieval": "both"}),
    ("graft-paper", {"stage_levels": (0, 2), "stage_thresholds": (0.6, 0.3)},
     {"stages": StagePolicy(levels=(0, 2), thresholds=(0.6, 0.3),
                            draft_shares=(20 / 60, 40 / 60))}),
]


def test_every_served_mode_is_shared() -> None:
    assert {mode for mode, _, _ in SHARED} == set(MODES)


@pytest.mark.parametrize("budget", [8, 16, 33])
@pytest.mark.parametrize(("mode", "plugin", "engine"), SHARED)
def test_engine_and_plugin_build_the_same_recipe(mode: str, plugin: dict, engine: dict,
                                                 budget: int) -> None:
    served = GraftSettings(mode=mode, **plugin).recipe(budget, VOCAB)
    offline = make_method(mode, budget=budget, vocab_size=VOCAB, **engine).recipe
    assert offline == served
    assert offline.plan.anchor_nodes == (max(1, budget // 4) if offline.uses_suffix else 0)


class FixedDrafter:
    """A drafter that proposes one fixed candidate tree, whatever the root."""

    feature_layers: tuple[int, ...] = ()

    def __init__(self, draft: DraftCandidates) -> None:
        self.draft = draft

    def reset(self) -> None:
        pass

    def observe(self, token_ids: torch.Tensor, features: dict) -> None:
        pass

    def propose(self, root_token: int, topk: int, depth: int, stop=None) -> DraftCandidates:
        return self.draft


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("mode", "plugin", "engine"), SHARED)
def test_engine_and_plugin_steps_build_the_same_tree(mode: str, plugin: dict, engine: dict,
                                                     seed: int) -> None:
    """The engine's step (``SpeculativeEngine.step_for`` + ``_step_tree``) and the worker's
    (``GraftState`` + ``step_tree`` on the draft loop's raw output), on the same request text,
    successor rows and draft: the same tree, node for node."""
    n, topk, depth = 16, 3, 4
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (48,), generator=gen).tolist()
    lists = eagle_loop_lists(gen, 1, topk, depth, VOCAB, peaked=1.0)
    logits = torch.randn(VOCAB, VOCAB, generator=gen) * 3
    root, seq_len = prompt[-1], len(prompt) - 1

    method = make_method(mode, budget=n, topk=topk, depth=depth, vocab_size=VOCAB,
                         fixed_width=True, **engine)
    offline = SpeculativeEngine(tiny_llama(0, layers=1), FixedDrafter(
        from_eagle_draft_loop(*lists, topk)))
    step = offline.step_for(method)
    step.start("r", prompt)
    step.observe_verified(torch.arange(VOCAB), logits)
    engine_tree, width = offline._step_tree(Generation(tokens=[]), method, step,
                                            offline.drafter, "r", root, seq_len)
    assert width == n

    state = GraftState(GraftSettings(mode=mode, **plugin), n, VOCAB)
    req = Req("r", "", array("q", prompt), SamplingParams())
    state.sync([req])
    state.step.observe_verified(torch.arange(VOCAB), logits)
    served_tree, _ = step_tree(state.step, ["r"], torch.tensor([root]), torch.tensor([seq_len]),
                               *all_candidates(*lists, n), topk)

    for name in ("tokens", "parents", "source"):
        assert torch.equal(getattr(engine_tree, name), getattr(served_tree, name)), name
    torch.testing.assert_close(engine_tree.scores, served_tree.scores)
    retrieved = (served_tree.source & NodeSource.RETRIEVED) > 0
    assert bool(retrieved.any())  # retrieval took part in the compared trees


def test_ablations_keep_their_own_source() -> None:
    for mode in PAPER_MODES[1:]:
        own = make_recipe(mode, 16).retrieval
        assert make_recipe(mode, 16, retrieval=own).retrieval == own
        other = "successor" if own == "suffix" else "suffix"
        with pytest.raises(ValueError, match="only retrieval, graft, graft-paper take"):
            make_recipe(mode, 16, retrieval=other)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "eagle", "budget": 16}, "mode must be one of"),
    ({"name": "graft", "budget": 1}, "budget must be >= 2"),
    ({"name": "graft", "budget": 16, "retrieval": "radix"}, "retrieval must be one of"),
])
def test_bad_recipes(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_recipe(**kwargs)
    assert "graft" in RECIPES
