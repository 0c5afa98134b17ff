"""Calibrated thresholds: the stored file, its use as the default by the engine tools and the
plugin settings, and ``bench/calibrate.py`` end to end on the embedded model."""

from __future__ import annotations

import json
import shutil

import pytest

from graft_sglang.calibration import FILE_NAME, Calibration, load_calibration
from graft_sglang.stages import StagePolicy


def test_missing_file_gives_the_builtin_defaults(tmp_path) -> None:
    assert load_calibration(tmp_path) == Calibration()
    assert load_calibration(None) == Calibration()
    assert load_calibration("org/hub-model-id") == Calibration()
    assert Calibration().stage_policy() == StagePolicy()


def test_round_trip_and_refusals(tmp_path) -> None:
    cal = Calibration(threshold=0.05, stage_thresholds=(0.5, 0.4, 0.3), evidence={"grid": [1]})
    cal.save(tmp_path)
    back = load_calibration(tmp_path)
    assert back == cal and back.evidence == {"grid": [1]}
    assert back.stage_policy().thresholds == (0.5, 0.4, 0.3)
    with pytest.raises(ValueError, match="threshold"):
        Calibration(threshold=0.0)
    with pytest.raises(ValueError, match="as many"):
        Calibration(stage_thresholds=(0.3, 0.2))
    (tmp_path / FILE_NAME).write_text(json.dumps({"threshold": 0.1}))
    with pytest.raises(ValueError, match="not a valid calibration"):
        load_calibration(tmp_path)


def test_plugin_settings_take_the_calibrated_default() -> None:
    from graft_sglang.plugin.settings import GraftSettings

    calibration = Calibration(threshold=0.03)
    assert GraftSettings.from_env({}, calibration=calibration).threshold == 0.03
    # An explicit setting wins over the calibration.
    env = {"SGLANG_GRAFT_THRESHOLD": "0.2"}
    assert GraftSettings.from_env(env, calibration=calibration).threshold == 0.2


def test_calibrate_script_end_to_end(tmp_path) -> None:
    """Two grid points per mode on one short prompt: every point checked lossless by the
    script itself, the best by the objective written next to a copy of the head."""
    from bench import calibrate
    from graft_sglang.eagle3.export import WEIGHTS_DIR
    from graft_sglang.engine.model import load_model

    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        pytest.skip("no committed head")
    try:
        load_model()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    head = tmp_path / "head"
    shutil.copytree(WEIGHTS_DIR, head)
    (head / FILE_NAME).unlink(missing_ok=True)
    out = calibrate.main(["--head", str(head), "--prompts", "1", "--max-new-tokens", "12",
                          "--thresholds", "0.05", "0.3", "--scales", "0.5", "2",
                          "--objective", "model", "--out", str(tmp_path / "res"),
                          "--write-head"])
    grid = out["grid"]
    assert [g["method"] for g in grid] == ["graft"] * 2 + ["graft-paper"] * 2
    stored = load_calibration(head)
    best_graft = max(grid[:2], key=lambda g: g["score"])
    best_paper = max(grid[2:], key=lambda g: g["score"])
    assert stored.threshold == best_graft["threshold"]
    assert list(stored.stage_thresholds) == best_paper["stage_thresholds"]
    assert best_paper["stage_thresholds"] in ([0.175, 0.125, 0.075], [0.7, 0.5, 0.3])
    # Higher checkpoint thresholds stop drafting more often: fewer draft forwards per step.
    assert grid[3]["draft_forwards_per_step"] <= grid[2]["draft_forwards_per_step"]
    assert json.loads((tmp_path / "res" / "calibration_N16.json").read_text())["grid"] == grid
