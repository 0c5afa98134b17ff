"""Measured pruning thresholds for one target + draft head pair, stored next to the head.

``bench/calibrate.py`` measures a grid of thresholds on calibration prompts (never the evaluation
sets) and writes the best setting as ``calibration.json`` in the head's directory; the offline
engine and the SGLang plugin (whose ``--speculative-draft-model-path`` is that directory) take
their defaults from it. Without the file the built-in defaults hold.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from graft_sglang.stages import StagePolicy

FILE_NAME = "calibration.json"
DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True)
class Calibration:
    """threshold:        ``graft``'s per-node pruning threshold on cumulative draft confidence.
    stage_thresholds: ``graft-paper``'s checkpoint thresholds, one per ``StagePolicy.levels``.
    evidence:         how they were chosen (command, prompts, objective, the measured grid)."""

    threshold: float = DEFAULT_THRESHOLD
    stage_thresholds: tuple[float, ...] = StagePolicy().thresholds
    evidence: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        StagePolicy(thresholds=tuple(self.stage_thresholds))  # validates length and range

    def stage_policy(self) -> StagePolicy:
        return StagePolicy(thresholds=tuple(self.stage_thresholds))

    def save(self, directory: Path) -> Path:
        path = Path(directory) / FILE_NAME
        data = asdict(self)
        data["stage_thresholds"] = list(self.stage_thresholds)
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path


def load_calibration(directory: str | Path | None) -> Calibration:
    """The calibration stored in ``directory``, or the built-in defaults if there is none."""
    path = None if directory is None else Path(directory) / FILE_NAME
    if path is None or not path.is_file():
        return Calibration()
    try:
        data = json.loads(path.read_text())
        return Calibration(threshold=float(data["threshold"]),
                           stage_thresholds=tuple(float(t) for t in data["stage_thresholds"]),
                           evidence=data.get("evidence", {}))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid calibration ({err})") from err
