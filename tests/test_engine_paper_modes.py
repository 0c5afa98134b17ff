"""The paper's recipe and its ablations in the offline engine: lossless, and the checkpoints
really skip draft forward passes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.lm import LMDrafter, truncated_copy
from graft_sglang.engine.methods import PAPER_MODES, make_method
from graft_sglang.stages import StagePolicy, StopRule
from tests.tiny_models import PROMPTS, VOCAB, tiny_llama


@pytest.mark.parametrize("budget", [8, 24])
@pytest.mark.parametrize("mode", PAPER_MODES)
def test_paper_modes_are_lossless(target: torch.nn.Module, references: dict[int, list[int]],
                                  budget: int, mode: str) -> None:
    engine = SpeculativeEngine(target, LMDrafter(truncated_copy(target, 1)))
    for i, prompt in enumerate(PROMPTS):
        method = make_method(mode, budget=budget, topk=3, depth=4, threshold=0.2,
                             vocab_size=VOCAB)
        gen = engine.generate(prompt, method, Sampling(max_new_tokens=40))
        assert gen.tokens == references[i], (mode, budget, i)


def test_checkpoints_skip_draft_forwards(target: torch.nn.Module) -> None:
    """A checkpoint that always fires at the root leaves one draft forward per step (the root's
    own distribution); without checkpoints the loop runs all its levels."""
    drafter = LMDrafter(tiny_llama(1, layers=2))
    engine = SpeculativeEngine(target, drafter)
    sampling = Sampling(max_new_tokens=24)
    paper = make_method("graft-paper", budget=16, topk=3, depth=5, vocab_size=VOCAB)
    always = StagePolicy(levels=(0,), thresholds=(1.0,), draft_shares=(0.25,))
    recipe = dataclasses.replace(paper.recipe, stop=StopRule(always))
    stopped = engine.generate(PROMPTS[0], dataclasses.replace(paper, recipe=recipe), sampling)
    full = engine.generate(PROMPTS[0], make_method("graft-noprune", budget=16, topk=3, depth=5,
                                                   vocab_size=VOCAB), sampling)
    assert stopped.tokens == full.tokens
    assert stopped.draft_forwards == stopped.steps  # root distribution only
    assert full.draft_forwards == 5 * full.steps  # root + 4 deeper levels


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="graft-paper"):
        make_method("graft-paperish")
