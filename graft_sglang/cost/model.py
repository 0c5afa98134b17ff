"""Step cost model: what a verify of ``n`` tree nodes and a draft pass cost at batch size ``bs``.

Units: one plain decode step (one new token per request) at the same batch size, so
``verify(bs, 1) == 1`` by definition. Every decision compares options at one batch size, where
relative and absolute costs rank the same; relative tables also carry over between machines of
the same shape better than seconds, and an analytic default is naturally relative.

Three ways to get a ``CostModel``:

* ``measure_costs(run_verify, run_draft, ...)``: a short calibration through callables that run
  one forward of ``bs x n`` new tokens (the engine's transformers model, SGLang's model runner);
  ``load_or_measure`` caches its result in a JSON file keyed by the machine and model.
* ``CostModel.from_dict`` / ``load_cost_model``: a table the user supplies (relative, or in
  seconds: then normalised by each batch size's ``n = 1`` entry).
* ``CostModel.analytic()``: a roofline-shaped default when nothing was measured.

Between measured points the model interpolates linearly in ``n`` (beyond the largest measured
size it extrapolates with the last segment's slope) and linearly in ``bs`` (outside the
measured batch sizes it takes the nearest one).
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNITS_RELATIVE = "decode_step"
UNITS_SECONDS = "seconds"


def _check_ascending(name: str, values: Sequence[int], minimum: int) -> None:
    if not values or list(values) != sorted(set(values)) or values[0] < minimum:
        raise ValueError(f"{name} must be distinct ascending integers >= {minimum}, got "
                         f"{list(values)}")


def _interp(xs: Sequence[float], ys: Sequence[float], x: float, extrapolate: bool) -> float:
    """Piecewise-linear ``y(x)``; outside ``xs``: the last segment's slope (``extrapolate``) or
    the nearest end value."""
    if len(xs) == 1:
        return ys[0]
    if x <= xs[0]:
        i = 0
        if not extrapolate:
            return ys[0]
    elif x >= xs[-1]:
        i = len(xs) - 2
        if not extrapolate:
            return ys[-1]
    else:
        i = bisect.bisect_right(xs, x) - 1
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class CostModel:
    """Costs relative to one plain decode step at the same batch size.

    batch_sizes:   measured batch sizes, ascending.
    tree_sizes:    measured verify widths ``n`` (root included), ascending, starting at 1.
    verify:        ``verify[i][j]`` = cost of verifying ``tree_sizes[j]`` nodes per request at
                   ``batch_sizes[i]`` (``verify[i][0] == 1``); nondecreasing in ``n`` (a
                   width that costs less than a smaller one makes the smaller one pointless).
    draft_pass:    ``draft_pass[i]`` = cost of one draft forward pass (``topk`` rows per
                   request) at ``batch_sizes[i]``.
    step_overhead: ``step_overhead[i]`` = host work a speculative step adds (retrieval, tree
                   build) at ``batch_sizes[i]``; zeros when not measured.
    decode_seconds: seconds of the plain step per batch size, if measured (reports only).
    source:        ``"measured"``, ``"table"`` or ``"analytic"``.
    evidence:      how it was obtained (machine, model, command); not compared.
    """

    batch_sizes: tuple[int, ...]
    tree_sizes: tuple[int, ...]
    verify: tuple[tuple[float, ...], ...]
    draft_pass: tuple[float, ...]
    step_overhead: tuple[float, ...] = ()
    decode_seconds: tuple[float, ...] = ()
    source: str = "table"
    evidence: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _check_ascending("batch_sizes", self.batch_sizes, 1)
        _check_ascending("tree_sizes", self.tree_sizes, 1)
        if self.tree_sizes[0] != 1:
            raise ValueError(f"tree_sizes must start at 1 (the plain step), got "
                             f"{list(self.tree_sizes)}")
        nb, nn = len(self.batch_sizes), len(self.tree_sizes)
        if len(self.verify) != nb or any(len(row) != nn for row in self.verify):
            raise ValueError(f"verify must be [{nb}][{nn}] (batch_sizes x tree_sizes)")
        for bs, row in zip(self.batch_sizes, self.verify, strict=True):
            if abs(row[0] - 1.0) > 1e-6 or any(b < a - 1e-9 for a, b in itertools.pairwise(row)):
                raise ValueError(f"verify row of bs {bs} must start at 1 and never decrease, "
                                 f"got {list(row)}")
        if len(self.draft_pass) != nb or any(c < 0 for c in self.draft_pass):
            raise ValueError(f"draft_pass must hold {nb} values >= 0")
        if not self.step_overhead:
            object.__setattr__(self, "step_overhead", (0.0,) * nb)
        if len(self.step_overhead) != nb or any(c < 0 for c in self.step_overhead):
            raise ValueError(f"step_overhead must hold {nb} values >= 0")
        if self.decode_seconds and len(self.decode_seconds) != nb:
            raise ValueError(f"decode_seconds must hold {nb} values or none")

    # -- queries ------------------------------------------------------------------------------
    def _along_bs(self, values: Sequence[float], bs: int) -> float:
        return _interp(self.batch_sizes, values, bs, extrapolate=False)

    def verify_cost(self, bs: int, n: int) -> float:
        """Cost of a verify of ``n`` nodes per request at batch size ``bs``. O(#sizes)."""
        if bs < 1 or n < 1:
            raise ValueError(f"bs and n must be >= 1, got bs={bs}, n={n}")
        per_bs = [_interp(self.tree_sizes, row, n, extrapolate=True) for row in self.verify]
        return self._along_bs(per_bs, bs)

    def draft_cost(self, bs: int, passes: int = 1) -> float:
        """Cost of ``passes`` draft forward passes at batch size ``bs``."""
        if passes < 0:
            raise ValueError(f"passes must be >= 0, got {passes}")
        return passes * self._along_bs(self.draft_pass, bs)

    def overhead(self, bs: int) -> float:
        """Host cost a speculative step adds at batch size ``bs`` (0 for a plain step)."""
        return self._along_bs(self.step_overhead, bs)

    def step_cost(self, bs: int, n: int, passes: int) -> float:
        """A whole step: ``passes`` draft passes, then a verify of ``n`` nodes (a plain step
        when ``n == 1`` and ``passes == 0``)."""
        speculative = n > 1 or passes > 0
        return (self.verify_cost(bs, n) + self.draft_cost(bs, passes)
                + (self.overhead(bs) if speculative else 0.0))

    # -- construction and storage -----------------------------------------------------------
    @staticmethod
    def analytic(knee_tokens: int = 64, fixed_tokens: float = 64.0, draft_pass: float = 0.1,
                 batch_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128),
                 tree_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32, 64)) -> CostModel:
        """Roofline-shaped default: a forward of ``T`` new tokens costs ``fixed_tokens +
        max(T, knee_tokens)`` (memory-bound below the knee, compute-bound above), so
        ``verify(bs, n) = (F + max(bs*n, K)) / (F + max(bs, K))``. The defaults describe a GPU
        serving a dense model; they are assumptions, not measurements: measure instead where
        possible."""
        if knee_tokens < 1 or fixed_tokens < 0 or draft_pass < 0:
            raise ValueError("analytic cost model needs knee_tokens >= 1, fixed_tokens >= 0, "
                             "draft_pass >= 0")

        def time_of(tokens: int) -> float:
            return fixed_tokens + max(tokens, knee_tokens)

        verify = tuple(tuple(time_of(bs * n) / time_of(bs) for n in tree_sizes)
                       for bs in batch_sizes)
        return CostModel(tuple(batch_sizes), tuple(tree_sizes), verify,
                         (draft_pass,) * len(batch_sizes), source="analytic",
                         evidence={"knee_tokens": knee_tokens, "fixed_tokens": fixed_tokens})

    @staticmethod
    def from_dict(data: Mapping) -> CostModel:
        """A table: ``{"units": "decode_step" | "seconds", "batch_sizes": [...],
        "tree_sizes": [1, ...], "verify": [[...], ...], "draft_pass": [...],
        "step_overhead": [...] (optional)}``. In seconds, every entry of a batch size is
        divided by that batch size's ``n = 1`` verify. Raises ``ValueError`` naming the key."""
        try:
            units = data.get("units", UNITS_RELATIVE)
            if units not in (UNITS_RELATIVE, UNITS_SECONDS):
                raise ValueError(f"units must be {UNITS_RELATIVE!r} or {UNITS_SECONDS!r}, got "
                                 f"{units!r}")
            verify = [[float(v) for v in row] for row in data["verify"]]
            draft = [float(v) for v in data["draft_pass"]]
            overhead = [float(v) for v in data.get("step_overhead", [])]
            decode: list[float] = [float(v) for v in data.get("decode_seconds", [])]
            if units == UNITS_SECONDS:
                decode = [row[0] for row in verify]
                if any(d <= 0 for d in decode):
                    raise ValueError("verify in seconds needs a positive n = 1 entry per row")
                draft = [c / d for c, d in zip(draft, decode, strict=True)]
                overhead = [c / d for c, d in zip(overhead, decode, strict=False)]
                verify = [[v / row[0] for v in row] for row in verify]
            return CostModel(
                batch_sizes=tuple(int(b) for b in data["batch_sizes"]),
                tree_sizes=tuple(int(n) for n in data["tree_sizes"]),
                verify=tuple(tuple(row) for row in verify), draft_pass=tuple(draft),
                step_overhead=tuple(overhead), decode_seconds=tuple(decode),
                source=str(data.get("source", "table")), evidence=dict(data.get("evidence", {})))
        except KeyError as err:
            raise ValueError(f"cost table lacks the key {err}") from err

    def to_dict(self) -> dict:
        return {"units": UNITS_RELATIVE, "batch_sizes": list(self.batch_sizes),
                "tree_sizes": list(self.tree_sizes), "verify": [list(r) for r in self.verify],
                "draft_pass": list(self.draft_pass), "step_overhead": list(self.step_overhead),
                "decode_seconds": list(self.decode_seconds), "source": self.source,
                "evidence": self.evidence}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def load_cost_model(path: str | Path) -> CostModel:
    """The table at ``path`` (``CostModel.from_dict``'s format, JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cost table {path}: cannot read it ({err})") from err
    try:
        return CostModel.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cost table {path}: {err}") from err


RunVerify = Callable[[int, int], object]
"""(bs, n) -> anything: run one target forward of ``bs x n`` new tokens, synchronised (the
call returns when the device is done)."""
RunDraft = Callable[[int], object]
"""bs -> anything: run one draft forward pass for ``bs`` requests, synchronised."""


def measure_costs(
    run_verify: RunVerify, run_draft: RunDraft | None = None, *,
    batch_sizes: Sequence[int] = (1,), tree_sizes: Sequence[int] = (1, 2, 4, 8, 16, 32),
    run_overhead: RunDraft | None = None, rounds: int = 5, warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter, evidence: Mapping | None = None,
) -> CostModel:
    """Calibrate a ``CostModel`` from timed calls of ``run_verify(bs, n)`` for every batch size
    and tree size, ``run_draft(bs)`` and ``run_overhead(bs)`` (each optional: 0 if not given).

    Each of ``rounds`` rounds (after ``warmup`` untimed ones) times every call once, back to
    back, and divides by that round's ``run_verify(bs, 1)``; a cost is the median of its
    rounds' ratios, so load that drifts between rounds (a shared machine) cancels out. A tree
    of ``n`` nodes can always be verified at a larger width (padded), so the cost of ``n`` is
    the cheapest measured width ``>= n`` (a suffix minimum: on CPUs a GEMM of 3 rows can cost
    more than one of 4); this also makes the table nondecreasing. Cost:
    ``len(batch_sizes) * (len(tree_sizes) + 2) * (rounds + warmup)`` calls.
    """
    _check_ascending("batch_sizes", batch_sizes, 1)
    _check_ascending("tree_sizes", tree_sizes, 1)
    if tree_sizes[0] != 1:
        raise ValueError("tree_sizes must start at 1 (the plain step is the unit)")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds}, {warmup}")

    def timed(fn: Callable[[], object]) -> float:
        t0 = clock()
        fn()
        return clock() - t0

    verify, draft, overhead, decode, raw, raw_ratios = [], [], [], [], [], []
    for bs in batch_sizes:
        calls: list[Callable[[], object]] = [lambda bs=bs, n=n: run_verify(bs, n)
                                             for n in tree_sizes]
        for extra in (run_draft, run_overhead):
            if extra is not None:
                calls.append(lambda bs=bs, extra=extra: extra(bs))
        samples = []  # [round][call] seconds
        for r in range(warmup + rounds):
            seconds = [timed(call) for call in calls]
            if r >= warmup:
                samples.append(seconds)
        if min(s[0] for s in samples) <= 0:
            raise ValueError(f"the plain step at bs {bs} took no time: the clock or run_verify "
                             "is broken")
        ratios = [statistics.median(s[j] / s[0] for s in samples) for j in range(len(calls))]
        raw_ratios.append(ratios[: len(tree_sizes)])
        row = list(ratios[: len(tree_sizes)])
        for j in range(len(row) - 2, 0, -1):
            row[j] = min(row[j], row[j + 1])
        verify.append((1.0, *(max(1.0, r) for r in row[1:])))
        extras = iter(ratios[len(tree_sizes):])
        draft.append(0.0 if run_draft is None else next(extras))
        overhead.append(0.0 if run_overhead is None else next(extras))
        decode.append(statistics.median(s[0] for s in samples))
        raw.append([statistics.median(s[j] for s in samples) for j in range(len(calls))])
    info = {"rounds": rounds, "warmup": warmup, "median_seconds": raw,
            "verify_ratios_raw": raw_ratios, **(evidence or {})}
    return CostModel(tuple(batch_sizes), tuple(tree_sizes), tuple(verify), tuple(draft),
                     tuple(overhead), tuple(decode), source="measured", evidence=info)


def load_cached(path: str | Path, key: Mapping) -> CostModel | None:
    """The cost model cached at ``path`` if it was measured for ``key`` (machine, model,
    dtype, threads, ...: JSON-serialisable), else None (no file, another key, a broken file)."""
    path = Path(path)
    key = json.loads(json.dumps(dict(key)))  # normalised: tuples become lists
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("evidence", {}).get("key") == key:
            return CostModel.from_dict(data)
    except (json.JSONDecodeError, ValueError, TypeError):
        pass  # a stale or broken cache is measured again
    return None


def save_cached(path: str | Path, key: Mapping, model: CostModel) -> CostModel:
    """``model`` with ``key`` in its evidence, written to ``path`` atomically (a reader never
    sees half a file); returns it."""
    path = Path(path)
    key = json.loads(json.dumps(dict(key)))
    model = CostModel(model.batch_sizes, model.tree_sizes, model.verify, model.draft_pass,
                      model.step_overhead, model.decode_seconds, model.source,
                      {**model.evidence, "key": key})
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    model.save(partial)
    partial.replace(path)
    return model


def load_or_measure(path: str | Path, key: Mapping, measure: Callable[[], CostModel]
                    ) -> CostModel:
    """The cached calibration at ``path`` if it was measured for ``key`` (``load_cached``),
    else ``measure()``, saved there with ``key``."""
    cached = load_cached(path, key)
    return cached if cached is not None else save_cached(path, key, measure())
