"""Graft's settings are declared once, on their fields: the environment parsing, the validation
and the README's table all come from those declarations."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from graft_sglang.calibration import Calibration
from graft_sglang.plugin import settings as settings_module
from graft_sglang.plugin.settings import (
    GraftSettings,
    declared_fields,
    env_name,
    server_settings,
    setting,
    settings_table,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_settings_table() -> str:
    """The table under the README's "### Settings" heading."""
    text = README.read_text()
    section = text.split("\n### Settings\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return "\n".join(rows) + "\n"


def test_readme_table_is_the_generated_one() -> None:
    assert readme_settings_table() == settings_table()


def test_every_field_is_a_declared_setting() -> None:
    assert [f.name for f in fields(GraftSettings)] == [f.name for f in declared_fields()]
    table = settings_table()
    for f in declared_fields():
        decl = f.metadata["setting"]
        assert f"| `{env_name(f.name)}` |" in table
        assert decl.check(f.default), f"{f.name}: its default is outside its own range"
        if decl.default_doc is None:  # the documented default parses back to the default
            documented = re.search(rf"`{env_name(f.name)}` \| `([^`]*)`", table).group(1)
            assert decl.parse(documented) == f.default


@dataclass(frozen=True)
class WithProbe(GraftSettings):
    """GraftSettings plus one setting declared the way every setting is."""

    probe_depth: int = setting(3, int, ">= 2", lambda v: isinstance(v, int) and v >= 2,
                               "a probe setting added in one place")


def test_a_setting_added_in_one_place_is_parsed_validated_and_documented() -> None:
    assert WithProbe.from_env({}).probe_depth == 3
    assert WithProbe.from_env({"SGLANG_GRAFT_PROBE_DEPTH": "5"}).probe_depth == 5
    with pytest.raises(ValueError, match=r"SGLANG_GRAFT_PROBE_DEPTH must be >= 2, got '1'"):
        WithProbe.from_env({"SGLANG_GRAFT_PROBE_DEPTH": "1"})
    with pytest.raises(ValueError, match=r"SGLANG_GRAFT_PROBE_DEPTH must be >= 2, got 'deep'"):
        WithProbe.from_env({"SGLANG_GRAFT_PROBE_DEPTH": "deep"})
    with pytest.raises(ValueError, match="SGLANG_GRAFT_PROBE_DEPTH must be >= 2"):
        WithProbe(probe_depth=0)  # the constructor validates too
    with pytest.raises(ValueError, match="unknown Graft setting"):
        GraftSettings.from_env({"SGLANG_GRAFT_PROBE_DEPTH": "5"})  # not a GraftSettings one
    with pytest.raises(ValueError, match="unknown Graft setting"):
        WithProbe.from_env({"SGLANG_GRAFT_PROBE_DEPT": "5"})
    assert ("| `SGLANG_GRAFT_PROBE_DEPTH` | `3` | >= 2 | a probe setting added in one place |"
            in settings_table(WithProbe))


@pytest.mark.parametrize(("name", "raw"), [
    ("THRESHOLD", "1.5"), ("THRESHOLD", "high"), ("RELATIVE", "0"), ("RETRIEVAL_WEIGHT", "2"),
    ("ROOT_NODES", "-1"), ("DRAFT_ANCHORS", "-2"), ("SHARED_CAPACITY", "0"),
    ("RADIX_FEED", "yes please"), ("EAGLE3", "maybe"), ("MODE", "eagle"),
    ("RETRIEVAL", "radix"), ("STAGE_LEVELS", "0;1"), ("STAGE_THRESHOLDS", "0.3,2"),
    ("SUCCESSOR_K", "0"),
])
def test_out_of_range_values_are_refused_with_the_allowed_ones(name: str, raw: str) -> None:
    decl = next(f.metadata["setting"] for f in declared_fields()
                if env_name(f.name) == f"SGLANG_GRAFT_{name}")
    with pytest.raises(ValueError, match=re.escape(f"SGLANG_GRAFT_{name} must be "
                                                   f"{decl.allowed}")):
        GraftSettings.from_env({f"SGLANG_GRAFT_{name}": raw})


def test_calibrated_defaults_and_mode_defaults() -> None:
    calibration = Calibration(threshold=0.07, stage_thresholds=(0.4, 0.3, 0.2))
    s = GraftSettings.from_env({}, calibration=calibration)
    assert (s.threshold, s.stage_thresholds, s.retrieval) == (0.07, (0.4, 0.3, 0.2), "suffix")
    s = GraftSettings.from_env({"SGLANG_GRAFT_THRESHOLD": "none",
                                "SGLANG_GRAFT_MODE": "graft-paper"}, calibration=calibration)
    assert (s.threshold, s.retrieval) == (None, "successor")
    assert GraftSettings().differences(GraftSettings(successor_k=4)) == [
        "SGLANG_GRAFT_SUCCESSOR_K: 10 != 4"]


def test_read_once_per_process(monkeypatch, tmp_path: Path) -> None:
    """A GRAFT server process reads its environment once: SGLang's argument resolution (the
    checks, the defaults, ``is_eagle3``) and the worker share one ``GraftSettings``."""
    pytest.importorskip("sglang")
    from tests.test_plugin import TINY_EAGLE3_CONFIG, resolve

    reads = []
    original = GraftSettings.from_env.__func__

    def counted(cls, env=None, calibration=None):
        reads.append(env)
        return original(cls, env, calibration)

    monkeypatch.setattr(settings_module.GraftSettings, "from_env", classmethod(counted))
    server_settings.cache_clear()
    (tmp_path / "config.json").write_text(json.dumps(TINY_EAGLE3_CONFIG))
    monkeypatch.setenv("SGLANG_GRAFT_THRESHOLD", "0.3")
    resolve(tmp_path)
    first = server_settings(str(tmp_path))
    monkeypatch.setenv("SGLANG_GRAFT_THRESHOLD", "0.4")  # changed after start: not seen
    resolve(tmp_path)
    assert server_settings(str(tmp_path)) is first and first.threshold == 0.3
    assert reads == [None]
    server_settings.cache_clear()
