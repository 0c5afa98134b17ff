"""The paper's checkpoint policy."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.stages import StagePolicy


def test_paper_defaults() -> None:
    policy = StagePolicy()
    assert [policy.draft_quota(s, 61) for s in range(3)] == [8, 24, 40]
    none = torch.full((4,), -1)
    best = torch.tensor([0.30, 0.40, 0.20, 0.01])
    assert policy.advance(none, 0, best).tolist() == [0, -1, 0, 0]
    assert policy.advance(none, 1, best).tolist() == [-1, -1, 1, 1]
    assert policy.advance(none, 3, best).tolist() == [-1] * 4  # not a checkpoint level
    assert policy.advance(none, 5, torch.tensor([0.149, 0.15, 0.2, 0.0])).tolist() == \
        [2, -1, -1, 2]
    # the first checkpoint that fires is kept
    assert policy.advance(torch.tensor([0, 1, -1, -1]), 5, torch.zeros(4)).tolist() == \
        [0, 1, 2, 2]
    assert policy.draft_quotas(torch.tensor([0, 1, 2, -1]), 61).tolist() == [8, 24, 40, 60]


def test_stages_from_scores_follow_the_levels() -> None:
    """Level 0 holds topk scores, later levels topk**2; each checkpoint reads its level's best."""
    policy = StagePolicy(levels=(0, 1, 2), thresholds=(0.5, 0.3, 0.2),
                         draft_shares=(0.1, 0.2, 0.3))
    topk = 2
    scores = torch.tensor([
        [0.4, 0.1, 0.3, 0.2, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1],  # level 0 best 0.4 < 0.5
        [0.6, 0.1, 0.25, 0.2, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1],  # level 1 best 0.25 < 0.3
        [0.6, 0.1, 0.35, 0.2, 0.1, 0.0, 0.15, 0.1, 0.1, 0.1],  # level 2 best 0.15 < 0.2
        [0.6, 0.1, 0.35, 0.2, 0.1, 0.0, 0.25, 0.1, 0.1, 0.1],  # none fires
    ])
    assert policy.stages_from_scores(scores, topk).tolist() == [0, 1, 2, -1]
    # a loop that stopped after level 1 has fewer levels to read
    assert policy.stages_from_scores(scores[:, :6], topk).tolist() == [0, 1, -1, -1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"levels": (1, 0), "thresholds": (0.1, 0.1), "draft_shares": (0.1, 0.1)}, "ascend"),
        ({"levels": (0,), "thresholds": (0.0,), "draft_shares": (0.1,)}, "thresholds"),
        ({"levels": (0,), "thresholds": (0.5,), "draft_shares": (1.5,)}, "draft_shares"),
        ({"levels": (0, 1), "thresholds": (0.5,), "draft_shares": (0.1,)}, "as many"),
    ],
)
def test_bad_policy(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        StagePolicy(**kwargs)
