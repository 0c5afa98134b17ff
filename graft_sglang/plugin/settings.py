"""Graft's own settings in an SGLang server.

SGLang has no per-plugin command-line flags (its arguments are a fixed ``msgspec`` struct), and
every TP scheduler process re-reads its configuration, so Graft reads environment variables,
the way SGLang's own ``SGLANG_*`` knobs work (``srt/environ.py``). They reach every subprocess.

| variable | default | meaning |
| --- | --- | --- |
| ``SGLANG_GRAFT_THRESHOLD`` | calibrated | prune below this cumulative confidence ("none": off);
  default: the draft head directory's ``calibration.json`` (``bench/calibrate.py``), else 0.1 |
| ``SGLANG_GRAFT_RELATIVE`` | none | prune below this fraction of the best confidence |
| ``SGLANG_GRAFT_RETRIEVAL_WEIGHT`` | 1.0 | multiplier on retrieved path probabilities |
| ``SGLANG_GRAFT_ROOT_NODES`` | N - 1 | retrieved trie size below the root (0 = no retrieval) |
| ``SGLANG_GRAFT_DRAFT_ANCHORS`` | 1 | kept draft leaves that also get a retrieval query |
| ``SGLANG_GRAFT_ANCHOR_NODES`` | N / 4 | retrieved trie size below each draft anchor |
| ``SGLANG_GRAFT_SHARED_CAPACITY`` | 2**20 | shared corpus tokens (finished requests, radix cache) |
| ``SGLANG_GRAFT_REQUEST_CAPACITY`` | 2**16 | tokens indexed per live request |
| ``SGLANG_GRAFT_RADIX_FEED`` | 1 | mirror the radix cache's content into the shared corpus |
| ``SGLANG_GRAFT_TP_BROADCAST`` | 0 | 1: broadcast each tree from TP rank 0 (see ``plugin/tp.py``) |
| ``SGLANG_GRAFT_EAGLE3`` | auto | 1 / 0: the draft head is (not) EAGLE-3; auto: its config |
| ``SGLANG_GRAFT_MODE`` | graft | ``graft`` (per-node pruning, suffix retrieval) or ``graft-paper``
  (stop-drafting checkpoints, stage split, successor table) |
| ``SGLANG_GRAFT_RETRIEVAL`` | by mode | ``suffix``, ``successor`` or ``both`` (slots compete);
  default ``suffix`` for graft, ``successor`` for graft-paper |
| ``SGLANG_GRAFT_STAGE_LEVELS`` | 0,1,5 | graft-paper's checkpoint levels |
| ``SGLANG_GRAFT_STAGE_THRESHOLDS`` | calibrated | one per level; default: ``calibration.json``,
  else 0.35,0.25,0.15 |
| ``SGLANG_GRAFT_SUCCESSOR_K`` | 10 | next tokens kept per token in the successor table |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from graft_sglang.calibration import DEFAULT_THRESHOLD
from graft_sglang.proposer import RetrievalPlan
from graft_sglang.retrieval.suffix import SuffixConfig
from graft_sglang.stages import StagePolicy
from graft_sglang.tree.builder import GraftConfig

PREFIX = "SGLANG_GRAFT_"
MODES = ("graft", "graft-paper")
RETRIEVAL_SOURCES = ("suffix", "successor", "both")
_KNOWN = ("THRESHOLD", "RELATIVE", "RETRIEVAL_WEIGHT", "ROOT_NODES", "DRAFT_ANCHORS",
          "ANCHOR_NODES", "SHARED_CAPACITY", "REQUEST_CAPACITY", "RADIX_FEED", "TP_BROADCAST",
          "EAGLE3", "MODE", "RETRIEVAL", "STAGE_LEVELS", "STAGE_THRESHOLDS", "SUCCESSOR_K")


def _number(env: Mapping[str, str], name: str, default: float | None, cast: type) -> float | None:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "none":
        return None
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{PREFIX}{name}={raw!r} is not a valid {cast.__name__}") from None


def _numbers(env: Mapping[str, str], name: str, default: tuple, cast: type) -> tuple:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return tuple(cast(v) for v in raw.split(","))
    except ValueError:
        raise ValueError(f"{PREFIX}{name}={raw!r} is not a comma-separated list of "
                         f"{cast.__name__}") from None


def _choice(env: Mapping[str, str], name: str, default: str | None,
            choices: tuple[str, ...]) -> str | None:
    raw = env.get(PREFIX + name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


@dataclass(frozen=True)
class GraftSettings:
    """Everything Graft needs besides SGLang's own ``--speculative-*`` arguments."""

    threshold: float | None = DEFAULT_THRESHOLD
    relative: float | None = None
    retrieval_weight: float = 1.0
    root_nodes: int | None = None  # None: N - 1
    draft_anchors: int = 1
    anchor_nodes: int | None = None  # None: N // 4
    shared_capacity: int = 1 << 20
    request_capacity: int = 1 << 16
    radix_feed: bool = True
    tp_broadcast: bool = False
    eagle3: bool | None = None  # None: decided from the draft model's config
    mode: str = "graft"
    retrieval: str = "suffix"
    stage_levels: tuple[int, ...] = StagePolicy().levels
    stage_thresholds: tuple[float, ...] = StagePolicy().thresholds
    successor_k: int = 10

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"{PREFIX}MODE must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.retrieval not in RETRIEVAL_SOURCES:
            raise ValueError(f"{PREFIX}RETRIEVAL must be one of {', '.join(RETRIEVAL_SOURCES)}, "
                             f"got {self.retrieval!r}")
        if self.successor_k < 1:
            raise ValueError(f"{PREFIX}SUCCESSOR_K must be >= 1, got {self.successor_k}")
        if self.mode == "graft-paper":
            try:
                self.stage_policy()
            except ValueError as err:
                raise ValueError(f"{PREFIX}STAGE_LEVELS / {PREFIX}STAGE_THRESHOLDS: {err}") \
                    from None

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None,
                 default_threshold: float = DEFAULT_THRESHOLD,
                 default_stage_thresholds: tuple[float, ...] = StagePolicy().thresholds,
                 ) -> GraftSettings:
        """Settings from ``SGLANG_GRAFT_*`` variables; ``default_threshold`` and
        ``default_stage_thresholds`` apply when ``SGLANG_GRAFT_THRESHOLD`` /
        ``SGLANG_GRAFT_STAGE_THRESHOLDS`` are unset (the head's calibrated values)."""
        env = os.environ if env is None else env
        known = {f"{PREFIX}{n}" for n in _KNOWN}
        unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known)
        if unknown:
            raise ValueError(f"unknown Graft setting(s) {unknown}; known: {sorted(known)}")
        flag = {"1": True, "true": True, "0": False, "false": False}
        eagle3_raw = env.get(PREFIX + "EAGLE3", "auto").strip().lower()
        if eagle3_raw not in (*flag, "auto"):
            raise ValueError(f"{PREFIX}EAGLE3 must be 1, 0 or auto, got {eagle3_raw!r}")
        switches = {}
        for name, default in (("RADIX_FEED", "1"), ("TP_BROADCAST", "0")):
            raw = env.get(PREFIX + name, default).strip().lower()
            if raw not in flag:
                raise ValueError(f"{PREFIX}{name} must be 1 or 0, got {raw!r}")
            switches[name] = flag[raw]
        mode = _choice(env, "MODE", "graft", MODES)
        return GraftSettings(
            threshold=_number(env, "THRESHOLD", default_threshold, float),
            relative=_number(env, "RELATIVE", None, float),
            retrieval_weight=_number(env, "RETRIEVAL_WEIGHT", 1.0, float),
            root_nodes=_number(env, "ROOT_NODES", None, int),
            draft_anchors=_number(env, "DRAFT_ANCHORS", 1, int),
            anchor_nodes=_number(env, "ANCHOR_NODES", None, int),
            shared_capacity=_number(env, "SHARED_CAPACITY", 1 << 20, int),
            request_capacity=_number(env, "REQUEST_CAPACITY", 1 << 16, int),
            radix_feed=switches["RADIX_FEED"],
            tp_broadcast=switches["TP_BROADCAST"],
            eagle3=None if eagle3_raw == "auto" else flag[eagle3_raw],
            mode=mode,
            retrieval=_choice(env, "RETRIEVAL", "successor" if mode == "graft-paper"
                              else "suffix", RETRIEVAL_SOURCES),
            stage_levels=_numbers(env, "STAGE_LEVELS", StagePolicy().levels, int),
            stage_thresholds=_numbers(env, "STAGE_THRESHOLDS", default_stage_thresholds, float),
            successor_k=_number(env, "SUCCESSOR_K", 10, int),
        )

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

    @property
    def stop_below(self) -> float | None:
        """graft mode: stop drafting once every request's best path is below the threshold
        (everything deeper would be pruned)."""
        return self.threshold if self.mode == "graft" else None

    def graft_config(self, budget: int, vocab_size: int | None = None) -> GraftConfig:
        """The builder's settings in a server: no per-step input checks (host reads); graft
        prunes below the threshold it also stops drafting at, graft-paper by the stage's draft
        quota (per request) alone."""
        return GraftConfig(budget=budget, threshold=self.stop_below, relative=self.relative,
                           retrieval_weight=self.retrieval_weight, vocab_size=vocab_size,
                           check_inputs=False)

    def retrieval_plan(self, budget: int) -> RetrievalPlan:
        if self.retrieval == "successor":
            return RetrievalPlan(0, 0, 0)
        root = budget - 1 if self.root_nodes is None else self.root_nodes
        anchor = max(1, budget // 4) if self.anchor_nodes is None else self.anchor_nodes
        return RetrievalPlan(root_nodes=root, draft_anchors=self.draft_anchors,
                             anchor_nodes=anchor)

    def suffix_config(self) -> SuffixConfig:
        return SuffixConfig(shared_capacity=self.shared_capacity,
                            request_capacity=self.request_capacity)
