"""Expected accepted length of a verification tree from its nodes' scores.

A node's *reach probability* is the probability that verification accepts it, i.e. that the
target's path goes through it. Siblings are disjoint events (the target continues with one
token), so the expected number of accepted nodes is the sum of the reach probabilities of the
verified nodes, and a step's expected tokens are that sum plus the bonus token (the root, reach
1, counts it). The builder's scores estimate reach (cumulative draft confidence; retrieved path
probability times its anchor's confidence); ``ScoreCalibration`` corrects them per source with
a monotone table fitted on observed acceptance (``bench/score_calibration.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from graft_sglang.tree.builder import GraftTree, NodeSource

SOURCE_CLASSES = ("draft", "retrieved", "both")
"""Calibration classes: draft only, retrieved only, and a node both proposed (merged)."""


def source_class(source: torch.Tensor) -> torch.Tensor:
    """[...] ``NodeSource`` flags -> [...] int64 index into ``SOURCE_CLASSES`` (-1: root or
    filler, which calibration leaves alone)."""
    draft = (source & int(NodeSource.DRAFT)) != 0
    retrieved = (source & int(NodeSource.RETRIEVED)) != 0
    out = torch.full_like(source, -1, dtype=torch.int64)
    out = torch.where(draft & ~retrieved, torch.zeros_like(out), out)
    out = torch.where(retrieved & ~draft, torch.ones_like(out), out)
    return torch.where(draft & retrieved, torch.full_like(out, 2), out)


def interpolate(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``y(x)`` through knots ``xs`` (ascending) / ``ys``, flat outside them.
    x: any shape; xs, ys: [K]. O(numel(x) log K)."""
    if xs.numel() == 1:
        return ys.expand_as(x).clone()
    i = (torch.searchsorted(xs, x.contiguous(), right=True) - 1).clamp(0, xs.numel() - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    t = ((x - x0) / (x1 - x0)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


Knots = tuple[tuple[float, ...], tuple[float, ...]]
IDENTITY: Knots = ((0.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class ScoreCalibration:
    """Per source class (``SOURCE_CLASSES``), a nondecreasing piecewise-linear map from the
    builder's score to a reach probability, given as knots ``(xs, ys)``; a class without knots
    keeps its scores (identity). ``evidence``: how the tables were fitted (not compared)."""

    knots: Mapping[str, Knots] = field(default_factory=dict)
    evidence: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name, (xs, ys) in self.knots.items():
            if name not in SOURCE_CLASSES:
                raise ValueError(f"calibration class must be one of {SOURCE_CLASSES}, got "
                                 f"{name!r}")
            if not xs or len(xs) != len(ys) or list(xs) != sorted(set(xs)):
                raise ValueError(f"calibration {name!r}: knots need distinct ascending xs and "
                                 "as many ys")
            if any(b < a for a, b in itertools.pairwise(ys)) or min(ys) < 0 or max(ys) > 1:
                raise ValueError(f"calibration {name!r}: ys must be nondecreasing in [0, 1]")

    def apply(self, scores: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """scores, source [...] -> calibrated [...] float32 (root / filler entries unchanged).
        O(numel * log knots)."""
        out = scores.float().clone()
        cls = source_class(source)
        for index, name in enumerate(SOURCE_CLASSES):
            if name not in self.knots:
                continue
            xs, ys = (torch.tensor(v, dtype=torch.float32, device=scores.device)
                      for v in self.knots[name])
            out = torch.where(cls == index, interpolate(scores.float(), xs, ys), out)
        return out

    def to_dict(self) -> dict:
        return {"knots": {k: [list(xs), list(ys)] for k, (xs, ys) in self.knots.items()},
                "evidence": self.evidence}

    @staticmethod
    def from_dict(data: Mapping) -> ScoreCalibration:
        try:
            knots = {str(k): (tuple(float(x) for x in v[0]), tuple(float(y) for y in v[1]))
                     for k, v in data["knots"].items()}
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"not a score calibration ({err})") from err
        return ScoreCalibration(knots, dict(data.get("evidence", {})))


def fit_isotonic(scores: Sequence[float] | torch.Tensor, accepted: Sequence[bool] | torch.Tensor,
                 bins: int = 10) -> Knots:
    """Knots of a monotone map from ``scores`` to the observed acceptance rate: equal-count
    bins (by score), then pool-adjacent-violators on the bins' rates (weighted by count).
    Knot x = a pooled block's mean score, y = its acceptance rate. O(S log S)."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    a = torch.as_tensor(accepted, dtype=torch.float64).flatten()
    if s.numel() != a.numel() or s.numel() == 0:
        raise ValueError("fit_isotonic needs as many accepted flags as scores, at least one")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    order = torch.sort(s, stable=True).indices
    s, a = s[order], a[order]
    blocks = []  # [sum score, sum accepted, count]
    for chunk_s, chunk_a in zip(torch.tensor_split(s, bins), torch.tensor_split(a, bins),
                                strict=True):
        if chunk_s.numel():
            blocks.append([float(chunk_s.sum()), float(chunk_a.sum()), chunk_s.numel()])
            # Pool while the last block's rate is below the previous one's.
            while len(blocks) > 1 and blocks[-1][1] / blocks[-1][2] < blocks[-2][1] / \
                    blocks[-2][2]:
                last = blocks.pop()
                blocks[-1] = [x + y for x, y in zip(blocks[-1], last, strict=True)]
    xs, ys = [], []
    for sum_s, sum_a, count in blocks:
        x = sum_s / count
        if xs and x <= xs[-1]:  # equal mean scores: keep the later (higher) rate
            ys[-1] = sum_a / count
            continue
        xs.append(x)
        ys.append(sum_a / count)
    return tuple(xs), tuple(ys)


def reach_probabilities(tree: GraftTree, calibration: ScoreCalibration | None = None
                        ) -> torch.Tensor:
    """[bs, N] reach probability of every node: its calibrated score, capped by every
    ancestor's (reaching a node means reaching its parent), root 1, filler 0. Nonincreasing
    along every path, so sorting by it gives ancestor-closed prefixes. O(bs * N^2)."""
    values = tree.scores.float()
    if calibration is not None:
        values = calibration.apply(values, tree.source)
    values = values.clamp(0.0, 1.0)
    filler = (tree.source & int(NodeSource.FILLER)) != 0
    values = torch.where(filler, torch.zeros_like(values), values)
    values[:, 0] = 1.0
    capped = torch.where(tree.layout.ancestors, values[:, None, :], torch.ones_like(
        values)[:, None, :])
    return capped.amin(dim=2)


def expected_tokens(reach: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """[bs, N] reach (root 1), optional [bs, N] bool verified nodes -> [bs] expected tokens
    of the step (accepted nodes + the bonus token). ``keep`` must be ancestor-closed."""
    if keep is not None:
        reach = torch.where(keep, reach, torch.zeros_like(reach))
    return reach.sum(dim=1)
