"""The paper's checkpoint policy."""

from __future__ import annotations

import pytest

from graft_sglang.stages import StagePolicy


def test_paper_defaults() -> None:
    policy = StagePolicy()
    assert [policy.draft_quota(s, 61) for s in range(3)] == [8, 24, 40]
    assert policy.fires(0, 0.30) == 0
    assert policy.fires(0, 0.40) is None
    assert policy.fires(1, 0.20) == 1
    assert policy.fires(3, 0.01) is None  # not a checkpoint level
    assert policy.fires(5, 0.149) == 2


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
