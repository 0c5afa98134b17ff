"""Graft's own settings in an SGLang server, each declared once, on its field.

SGLang has no per-plugin command-line flags (its arguments are a fixed ``msgspec`` struct), so
Graft reads ``SGLANG_GRAFT_*`` environment variables, the way SGLang's own knobs work
(``srt/environ.py``); they reach every subprocess. Every field of ``GraftSettings`` carries its
``Declaration`` (variable ``SGLANG_GRAFT_<FIELD>``, parser, allowed values, default, one-line
doc): the environment parsing (``GraftSettings.from_env``), the validation (``__post_init__``)
and the README's table (``settings_table``) are all derived from it, so a setting added there
appears in all three. A process reads its environment once (``server_settings``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from graft_sglang.calibration import DEFAULT_THRESHOLD, Calibration, load_calibration
from graft_sglang.cost.model import CostModel, load_cost_model
from graft_sglang.cost.policy import CostPolicy
from graft_sglang.recipe import MODES, OWN_SOURCE, RETRIEVAL_SOURCES, Recipe, make_recipe
from graft_sglang.retrieval.suffix import SuffixConfig
from graft_sglang.stages import StagePolicy

PREFIX = "SGLANG_GRAFT_"
_FLAGS = {"1": True, "true": True, "0": False, "false": False}
_MALFORMED = object()  # a variable's text its parser refused


@dataclass(frozen=True)
class Declaration:
    """How one ``GraftSettings`` field is set from the environment.

    parse:       the variable's text (stripped, non-empty) -> value; raises ValueError.
    allowed:     the allowed values as an operator reads them (error messages, docs).
    check:       whether a value (parsed or given to the constructor) is allowed.
    doc:         one line: what the setting does.
    default_doc: the documented default where it is computed (otherwise the field's default).
    calibrated:  unset, it takes the draft head's ``calibration.json`` value of the same name.
    """

    parse: Callable[[str], Any]
    allowed: str
    check: Callable[[Any], bool]
    doc: str
    default_doc: str | None = None
    calibrated: bool = False


def setting(default: Any, parse: Callable[[str], Any], allowed: str, check: Callable[[Any], bool],
            doc: str, *, default_doc: str | None = None, calibrated: bool = False) -> Any:
    """A ``GraftSettings`` field with its declaration (see ``Declaration``)."""
    return field(default=default, metadata={"setting": Declaration(
        parse, allowed, check, doc, default_doc, calibrated)})


def env_name(name: str) -> str:
    """The environment variable of field ``name``."""
    return PREFIX + name.upper()


# -- parsers (text -> value; ValueError when malformed) -----------------------------------------
def _optional(cast: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda raw: None if raw.lower() == "none" else cast(raw)


def _flag(raw: str) -> bool:
    if raw.lower() not in _FLAGS:
        raise ValueError(raw)
    return _FLAGS[raw.lower()]


def _auto_flag(raw: str) -> bool | None:
    return None if raw.lower() == "auto" else _flag(raw)


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(raw)
        return raw.lower()
    return parse


def _list(cast: Callable[[str], Any]) -> Callable[[str], tuple]:
    return lambda raw: tuple(cast(v) for v in raw.split(","))


# -- checks ---------------------------------------------------------------------------------------
def _unit(value: Any) -> bool:
    return isinstance(value, float | int) and not isinstance(value, bool) and 0.0 < value <= 1.0


def _unit_or_none(value: Any) -> bool:
    return value is None or _unit(value)


def _at_least(low: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (
        isinstance(v, int) and not isinstance(v, bool) and v >= low)


def _is_bool(optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, bool) or (optional and v is None)


def _file_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and Path(value).expanduser().is_file())


@dataclass(frozen=True)
class GraftSettings:
    """Everything Graft needs besides SGLang's own ``--speculative-*`` arguments (``N``: the
    tree size, ``--speculative-num-draft-tokens``)."""

    threshold: float | None = setting(
        DEFAULT_THRESHOLD, _optional(float), "in (0, 1], or none", _unit_or_none,
        "prune draft nodes below this cumulative confidence (`none`: off)",
        default_doc="calibrated: the draft head's `calibration.json` (`make calibrate`), "
                    "else `0.1`",
        calibrated=True)
    relative: float | None = setting(
        None, _optional(float), "in (0, 1], or none", _unit_or_none,
        "also prune below this fraction of the best node's confidence")
    retrieval_weight: float = setting(
        1.0, float, "in (0, 1]", _unit,
        "multiplier on retrieved paths' probabilities when ranking")
    root_nodes: int | None = setting(
        None, _optional(int), ">= 0, or none", _at_least(0, optional=True),
        "retrieved trie size below the root (`0`: no retrieval)", default_doc="N - 1")
    draft_anchors: int = setting(
        1, int, ">= 0", _at_least(0), "kept draft leaves that also get a retrieval query")
    anchor_nodes: int | None = setting(
        None, _optional(int), ">= 0, or none", _at_least(0, optional=True),
        "retrieved trie size below each draft anchor", default_doc="N / 4")
    shared_capacity: int = setting(
        1 << 20, int, ">= 1", _at_least(1),
        "tokens of the shared corpus (finished requests, radix cache)")
    request_capacity: int = setting(
        1 << 16, int, ">= 1", _at_least(1), "tokens indexed per live request")
    radix_feed: bool = setting(
        True, _flag, "1 or 0", _is_bool(),
        "mirror the radix cache's content into the shared corpus")
    tp_broadcast: bool = setting(
        False, _flag, "1 or 0", _is_bool(),
        "`1`: TP rank 0's tree and stop-drafting decisions on every rank (`plugin/tp.py`)")
    eagle3: bool | None = setting(
        None, _auto_flag, "auto, 1 or 0", _is_bool(optional=True),
        "the draft head is (`1`) or is not (`0`) EAGLE-3; `auto`: its `config.json`",
        default_doc="`auto`")
    mode: str = setting(
        "graft", _choice(MODES), "one of " + ", ".join(MODES), lambda v: v in MODES,
        "`graft` (per-node pruning, suffix / radix retrieval, trie-merge) or `graft-paper` (the "
        "paper's stop-drafting checkpoints, stage split, successor table)")
    retrieval: str | None = setting(
        None, _choice(RETRIEVAL_SOURCES), "one of " + ", ".join(RETRIEVAL_SOURCES),
        lambda v: v is None or v in RETRIEVAL_SOURCES,
        "retrieval source(s); `both`: their slots compete",
        default_doc="by mode: `suffix` (graft), `successor` (graft-paper)")
    stage_levels: tuple[int, ...] = setting(
        StagePolicy().levels, _list(int), "comma-separated ascending levels >= 0",
        lambda v: isinstance(v, tuple) and all(_at_least(0)(x) for x in v),
        "graft-paper's checkpoint levels (each < `--speculative-num-steps`)")
    stage_thresholds: tuple[float, ...] = setting(
        StagePolicy().thresholds, _list(float), "comma-separated, in (0, 1], one per level",
        lambda v: isinstance(v, tuple) and all(_unit(x) for x in v),
        "graft-paper's checkpoint thresholds",
        default_doc="calibrated: the draft head's `calibration.json`, else `0.35,0.25,0.15`",
        calibrated=True)
    successor_k: int = setting(
        10, int, ">= 1", _at_least(1), "next tokens kept per token in the successor table")
    log_interval: int = setting(
        200, int, ">= 1", _at_least(1),
        "verify steps between the per-source acceptance log lines (every TP rank logs its own)")
    cost_table: str | None = setting(
        None, _optional(str), "a JSON file, or none", _file_or_none,
        "step costs relative to a decode step (`CostModel` JSON, as `python -m bench.cost_model` "
        "writes): each step then drafts the levels and verifies the prefix of its tree that "
        "maximise expected tokens per unit of time, a plain step where nothing pays (`none`: "
        "the whole tree every step)",
        default_doc="`none` (the CPU launcher: its table for the embedded model)")

    def __post_init__(self) -> None:
        for f in declared_fields(type(self)):
            value, decl = getattr(self, f.name), f.metadata["setting"]
            if not decl.check(value):
                raise ValueError(f"{env_name(f.name)} must be {decl.allowed}, got {value!r}")
        if self.retrieval is None:  # the mode's own source
            object.__setattr__(self, "retrieval", OWN_SOURCE[self.mode])
        if self.mode == "graft-paper":
            try:
                self.stage_policy()
            except ValueError as err:
                raise ValueError(f"{PREFIX}STAGE_LEVELS / {PREFIX}STAGE_THRESHOLDS: {err}") \
                    from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 calibration: Calibration | None = None) -> GraftSettings:
        """Settings from ``SGLANG_GRAFT_*`` variables (``env``, default ``os.environ``); an
        unset calibrated setting takes ``calibration``'s value. Raises ValueError naming the
        variable for an unknown name or a value outside its allowed range."""
        env = os.environ if env is None else env
        declared = {env_name(f.name): f for f in declared_fields(cls)}
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in declared)
        if unknown:
            raise ValueError(f"unknown Graft setting(s) {unknown}; known: {sorted(declared)}")
        values: dict[str, Any] = {}
        for name, f in declared.items():
            decl, raw = f.metadata["setting"], env.get(name, "").strip()
            if not raw:
                if decl.calibrated and calibration is not None:
                    values[f.name] = getattr(calibration, f.name)
                continue
            try:
                value = decl.parse(raw)
            except ValueError:
                value = _MALFORMED
            if value is _MALFORMED or not decl.check(value):
                raise ValueError(f"{name} must be {decl.allowed}, got {raw!r}")
            values[f.name] = value
        return cls(**values)

    def differences(self, other: GraftSettings) -> list[str]:
        """``VARIABLE: mine != other's`` for every setting that differs."""
        return [f"{env_name(f.name)}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
                for f in declared_fields(type(self))
                if getattr(self, f.name) != getattr(other, f.name)]

    def stage_policy(self) -> StagePolicy | None:
        """graft-paper's checkpoints (None in graft mode). The draft shares are the paper's
        8 / 24 / 40 of 60 for three levels, else spread evenly up to 40 / 60."""
        if self.mode != "graft-paper":
            return None
        levels = tuple(self.stage_levels)
        if len(levels) == len(StagePolicy().levels):
            shares = StagePolicy().draft_shares
        else:
            shares = tuple(StagePolicy().draft_shares[-1] * (i + 1) / len(levels)
                           for i in range(len(levels)))
        return StagePolicy(levels=levels, thresholds=tuple(self.stage_thresholds),
                           draft_shares=shares)

    def recipe(self, budget: int, vocab_size: int | None = None) -> Recipe:
        """The mode's recipe for trees of ``budget`` nodes (``--speculative-num-draft-tokens``):
        ``recipe.make_recipe`` with these settings, as the offline engine builds it. graft
        prunes below the threshold it also stops drafting at; graft-paper by each request's
        stage split alone."""
        return make_recipe(self.mode, budget, threshold=self.threshold, relative=self.relative,
                           retrieval_weight=self.retrieval_weight, retrieval=self.retrieval,
                           root_nodes=self.root_nodes, draft_anchors=self.draft_anchors,
                           anchor_nodes=self.anchor_nodes, stages=self.stage_policy(),
                           successor_k=self.successor_k, vocab_size=vocab_size,
                           cost=CostPolicy() if self.cost_table else None)

    def cost_model(self) -> CostModel | None:
        """The step costs of ``cost_table`` (None without one). Raises ValueError naming the
        setting for a file that is not a cost table."""
        if self.cost_table is None:
            return None
        try:
            return load_cost_model(Path(self.cost_table).expanduser())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"SGLANG_GRAFT_COST_TABLE={self.cost_table} is not a cost table "
                             f"(graft_sglang.cost.model.CostModel JSON): {e}") from e

    def suffix_config(self) -> SuffixConfig:
        return SuffixConfig(shared_capacity=self.shared_capacity,
                            request_capacity=self.request_capacity)


def declared_fields(cls: type = GraftSettings) -> list:
    """The fields of ``cls`` (``GraftSettings`` or a subclass) that carry a ``Declaration``."""
    return [f for f in fields(cls) if "setting" in f.metadata]


@functools.cache
def server_settings(draft_model_path: str | None) -> GraftSettings:
    """The settings of this process's GRAFT server: the environment is read once per process
    (every later call returns the same object), calibrated defaults from
    ``calibration.json`` in ``draft_model_path`` (a local head directory; none elsewhere).
    Raises ValueError as ``from_env`` does (nothing is cached then)."""
    return GraftSettings.from_env(calibration=load_calibration(draft_model_path))


def _default_text(f: Any) -> str:
    decl = f.metadata["setting"]
    if decl.default_doc is not None:
        return decl.default_doc
    value = f.default
    if value is None:
        text = "none"
    elif isinstance(value, bool):
        text = str(int(value))
    elif isinstance(value, tuple):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return f"`{text}`"


def settings_table(cls: type = GraftSettings) -> str:
    """The markdown table of ``cls``'s settings (the README's), one row per declaration."""
    rows = ["| variable | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for f in declared_fields(cls):
        decl = f.metadata["setting"]
        rows.append(f"| `{env_name(f.name)}` | {_default_text(f)} | {decl.allowed} | "
                    f"{decl.doc} |")
    return "\n".join(rows) + "\n"
