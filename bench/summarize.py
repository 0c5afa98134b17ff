"""Markdown from the recorded results: an offline sweep's tables, or the whole results document.

Offline sweep (``bench.offline``'s JSON): one block per tree size N, every method and mode side
by side, and the winner per N by tokens/s and by tau, printed:

    python -m bench.summarize bench/results/offline-eagle3/offline_mtbench.json

Results document: ``--results-doc`` renders every JSON file under ``bench/results/`` (and the
shipped EAGLE-3 head's ``eval.json``) into ``docs/results.md``: one section per file family (the
command that writes it, a link to the file, a table), families whose files are absent skipped,
a file no renderer knows shown generically. ``--check`` writes nothing and exits 1 if the
committed document differs from what the files give (``tests/test_docs.py`` checks the same):

    python -m bench.summarize --results-doc [--check] [--results-dir DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RESULTS_DOC = ROOT / "docs" / "results.md"
HEAD_EVALS = "graft_sglang/eagle3/weights/*/eval.json"
REGENERATE = "python -m bench.summarize --results-doc"


# --- formatting -----------------------------------------------------------------------------


@dataclass
class Table:
    """A markdown table: ``rows`` of already formatted cells, one per record of its JSON."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    footer: str | None = None

    def markdown(self) -> str:
        lines = [f"| {' | '.join(self.headers)} |", "| " + " | ".join("---" for _ in self.headers)
                 + " |"]
        lines += [f"| {' | '.join(cell.replace('|', '/') for cell in row)} |"
                  for row in self.rows]
        return "\n".join(lines)


def num(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number with ``digits`` decimals (``-`` for None or a non-number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return f"{value:.{digits}f}{suffix}"


def pct(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.0%}"


def yes(value: Any) -> str:
    return {True: "yes", False: "NO"}.get(value, "-")


def cell(value: Any) -> str:
    """Any JSON value as a table cell (generic rendering)."""
    if isinstance(value, bool):
        return yes(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)[:120]
    return "-" if value is None else str(value)


# --- offline sweeps (bench.offline) -----------------------------------------------------------


def label(run: dict) -> str:
    s = run["settings"]
    name = run["method"]
    extras = []
    if s.get("threshold") is not None:
        extras.append(f"t={s['threshold']:g}")
    if s.get("retrieval") and s.get("retrieval") != "suffix" and name in ("graft", "retrieval"):
        extras.append(s["retrieval"])
    return f"{name} ({', '.join(extras)})" if extras else name


def draft_passes(run: dict) -> float | None:
    if "draft_forwards_per_step" in run:
        return run["draft_forwards_per_step"]
    steps = run.get("steps")
    return run["draft_forwards"] / steps if steps and "draft_forwards" in run else None


def offline_blocks(result: dict) -> list[tuple[int, Table, str]]:
    """Per tree size N: the table of every run at N and the line naming the winners."""
    runs = result["runs"]
    blocks = []
    for n in sorted({r["settings"]["budget"] for r in runs if "budget" in r["settings"]}):
        rows = [r for r in runs if r["settings"].get("budget") == n]
        table = Table(["method", "tau", "draft passes / step", "verified / step", "tok/s",
                       "speedup", "grafted", "identical"], title=f"N = {n}")
        for r in rows:
            table.rows.append([label(r), num(r["tau"]), num(draft_passes(r)),
                               num(r["verified_per_step"], 1), num(r["tokens_per_s"], 1),
                               num(r["speedup"], 2, "x"), pct(r["grafted_share"]),
                               yes(r["identical"])])
        fastest = max(rows, key=lambda r: r["tokens_per_s"])
        longest = max(rows, key=lambda r: r["tau"])
        blocks.append((n, table, f"Fastest at N = {n}: {label(fastest)} "
                                 f"({fastest['tokens_per_s']:.1f} tok/s); longest accepted: "
                                 f"{label(longest)} (tau {longest['tau']:.2f})."))
    return blocks


def plain_line(result: dict) -> str:
    ar = next((r for r in result["runs"] if r["method"] == "autoregressive"), None)
    plain = f"; plain decoding {ar['tokens_per_s']:.1f} tok/s" if ar else ""
    return (f"{result['dataset']}: {result['prompts']} prompts, {result['max_new_tokens']} new "
            f"tokens, {result['threads']} thread(s){plain}")


def tables(result: dict) -> str:
    """The offline sweep's blocks as printed text (the command-line use)."""
    lines = [plain_line(result), ""]
    for n, table, winners in offline_blocks(result):
        lines += [f"N = {n}:", "", table.markdown(), "", winners, ""]
    return "\n".join(lines)


# --- one renderer per file family ------------------------------------------------------------


@dataclass
class Rendered:
    """What a renderer makes of one file: lines above the tables, the tables, lines below."""

    notes: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


def meta_line(data: dict, keys: Sequence[str] = ("date", "machine", "cpu", "cpu_count", "cpus",
                                                 "threads", "load_average_1min")) -> str | None:
    """The run's circumstances, from the top level or ``meta`` of a result file."""
    meta = dict(data.get("meta") or {}) if isinstance(data.get("meta"), dict) else {}
    meta.update({k: v for k, v in data.items() if k in keys})
    parts = [f"{k.replace('_', ' ')} {cell(meta[k])}" for k in keys if meta.get(k) is not None]
    return "Run: " + ", ".join(parts) + "." if parts else None


def serving_rows(data: Any) -> list[dict] | None:
    """The rows of a serving-benchmark record (``bench.serving.run`` / ``bench.demo``)."""
    if not isinstance(data, dict):
        return None
    for key in ("rows", "methods"):
        rows = data.get(key)
        if (isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
                and all({"method", "workload", "concurrency", "tokens_per_s"} <= set(r)
                        for r in rows)):
            return rows
    return None


def render_serving(data: dict) -> Rendered:
    rows = serving_rows(data) or []
    plain = {(r["workload"], r["concurrency"]): r["tokens_per_s"]
             for r in rows if r["method"] == "PLAIN"}
    table = Table(["method", "workload", "conc.", "accept length", "tok/s", "speedup vs plain",
                   "grafted share", "identical to plain"])
    for r in rows:
        base = plain.get((r["workload"], r["concurrency"]))
        table.rows.append([r["method"], r["workload"], str(r["concurrency"]),
                           num(r.get("accept_length")), num(r["tokens_per_s"], 1),
                           num(r["tokens_per_s"] / base, 2, "x") if base else "-",
                           num(r.get("grafted_share")), yes(r.get("identical_to_plain"))])
    notes = [f"Server: {data['server']}."] if data.get("server") else []
    return Rendered(notes, [table])


def render_engine_methods(data: dict, legacy: bool = True) -> Rendered:
    """An offline-engine record with a ``methods`` list (an earlier ``make demo``'s format)."""
    table = Table(["method", "N", "tau", "tok/s", "speedup", "grafted", "identical to target"])
    for r in data["methods"]:
        table.rows.append([r["method"], str(r.get("settings", {}).get("budget", "-")),
                           num(r.get("tau")), num(r.get("tokens_per_s"), 1),
                           num(r.get("speedup"), 2, "x"), pct(r.get("grafted_share")),
                           yes(r.get("identical"))])
    notes = ["This file is in the offline engine's format (an earlier `make demo`, before it "
             "served through SGLang); the current `make demo` rewrites it in the serving "
             "format."] if legacy else []
    parts = [f"{k.replace('_', ' ')} {cell(data[k])}" for k in
             ("model", "drafter", "prompts", "max_new_tokens", "budget", "threads")
             if data.get(k) is not None]
    if parts:
        notes.append("Setting: " + ", ".join(parts) + ".")
    return Rendered(notes, [table])


def render_demo(data: dict) -> Rendered:
    if serving_rows(data) is not None:
        return render_serving(data)
    if isinstance(data.get("methods"), list):
        return render_engine_methods(data)
    return render_generic(data)


def render_offline(data: dict) -> Rendered:
    notes = [plain_line(data) + "."]
    if meta_line(data):
        notes.append(meta_line(data))
    if data.get("drafter"):
        notes.append(f"Drafter: {data['drafter']}.")
    out = Rendered(notes)
    for _, table, winners in offline_blocks(data):
        table.footer = winners
        out.tables.append(table)
    return out


def render_calibration(data: dict) -> Rendered:
    table = Table(["method", "threshold(s)", "tau", "draft passes / step", "verified / step",
                   "tok/s", "score", "chosen"])
    chosen = {"graft": [data.get("threshold")],
              "graft-paper": list(data.get("stage_thresholds") or [])}
    for r in data.get("grid", []):
        thresholds = r.get("stage_thresholds", [r.get("threshold")])
        if not isinstance(thresholds, list):
            thresholds = [thresholds]
        picked = [round(t, 6) for t in thresholds if isinstance(t, int | float)] == [
            round(t, 6) for t in chosen.get(r["method"], []) if isinstance(t, int | float)]
        table.rows.append([r["method"], ", ".join(num(t, 3) for t in thresholds), num(r["tau"]),
                           num(r.get("draft_forwards_per_step")), num(r.get("verified_per_step"),
                                                                      1),
                           num(r["tokens_per_s"], 1), num(r.get("score"), 2), "yes" if picked
                           else ""])
    notes = [f"Chosen: graft {cell(data.get('threshold'))}, graft-paper "
             f"{cell(data.get('stage_thresholds'))}; objective {cell(data.get('objective'))}; "
             f"{cell(data.get('prompts'))} prompts ({cell(data.get('prompt_source'))}), N = "
             f"{cell(data.get('budget'))}, {cell(data.get('max_new_tokens'))} new tokens; plain "
             f"decoding {num(data.get('autoregressive_tokens_per_s'), 1)} tok/s."]
    return Rendered(notes, [table])


def render_head_eval(data: dict) -> Rendered:
    dense, cost = data.get("dense_tree") or {}, data.get("cost") or {}
    table = Table(["measure", "value"])
    table.rows = [
        ["first-step top-1 agreement", num(data.get("first_step_agreement"), 3)],
        ["agreement per draft step", ", ".join(num(v, 3) for v in
                                               data.get("agreement_per_step") or [])],
        ["draft vocabulary coverage of the responses", num(data.get("draft_vocab_coverage"), 3)],
        [f"dense tree (N = {cell(dense.get('budget'))}, topk {cell(dense.get('topk'))}, depth "
         f"{cell(dense.get('depth'))}): tokens per target forward", num(dense.get("tau"))],
        ["one draft step / one target decode step", f"{num(cost.get('ratio'), 3)} "
         f"({num(cost.get('draft_step_ms'), 1)} / {num(cost.get('target_decode_ms'), 1)} ms)"],
    ]
    notes = [f"Held-out MT-bench, {cell(data.get('prompts'))} prompts, "
             f"{cell(data.get('max_new_tokens'))} new tokens, greedy, "
             f"{cell(data.get('threads'))} thread(s); head {cell(data.get('head'))}."]
    return Rendered(notes, [table])


def render_retrieval(data: dict) -> Rendered:
    out = Rendered([f"Budget {cell(data.get('budget'))} tokens per step, "
                    f"{cell(data.get('threads'))} thread(s); successor widths "
                    f"{cell(data.get('successor_widths'))}. Times are medians per step. Each "
                    f"probabilistic source's calibration per decile is in the file."])
    for name, stream in (data.get("streams") or {}).items():
        table = Table(["source", "steps", "tokens / step", "first-token hit rate",
                       "lookup µs", "update µs"],
                      title=f"Stream `{name}`: {cell(stream.get('tokens'))} tokens, the first "
                            f"{cell(stream.get('prompt'))} as prompt")
        for r in stream.get("rows", []):
            table.rows.append([r["source"], str(r.get("steps", "-")), num(r.get("tau"), 3),
                               num(r.get("first_token_hit_rate"), 3), num(r.get("lookup_us"), 1),
                               num(r.get("update_us"), 1)])
        out.tables.append(table)
    if data.get("batched"):
        table = Table(["bs", "suffix µs / step", "successor µs / step"],
                      title="Batched sources, per step")
        table.rows = [[str(r["bs"]), num(r.get("suffix_us"), 1), num(r.get("successor_us"), 1)]
                      for r in data["batched"]]
        out.tables.append(table)
    return out


def render_tree_build(data: dict) -> Rendered:
    table = Table(["bs", "N", "draft candidates", "retrieve µs", "build µs", "commit µs",
                   "total µs / step"])
    table.rows = [[str(r["bs"]), str(r["budget"]), str(r.get("draft_candidates", "-")),
                   num(r.get("retrieve_us"), 0), num(r.get("build_us"), 0),
                   num(r.get("commit_us"), 0), num(r.get("total_us"), 0)]
                  for r in data.get("rows", [])]
    return Rendered([line for line in [meta_line(data)] if line], [table])


def render_step_overhead(data: dict) -> Rendered:
    table = Table(["bs", "N", "draft candidates", "host reads / step", "D2H copies / step",
                   "retrieval ms", "build ms", "total ms", "baseline ms", "reference ms",
                   "speedup vs baseline"])
    table.rows = [[str(r["bs"]), str(r["budget"]), str(r.get("draft_candidates", "-")),
                   str(r.get("host_reads_per_step", "-")), str(r.get("d2h_copies_per_step", "-")),
                   num(r.get("retrieval_ms"), 3), num(r.get("build_ms"), 3),
                   num(r.get("total_ms"), 3), num(r.get("baseline_total_ms"), 3),
                   num(r.get("reference_total_ms"), 3), num(r.get("speedup"), 2, "x")]
                  for r in data.get("rows", [])]
    meta = data.get("meta") or {}
    notes = [line for line in [meta_line(data)] if line]
    for key in ("plan", "mask_mode", "baseline", "reference"):
        if meta.get(key):
            notes.append(f"{key.replace('_', ' ').capitalize()}: {meta[key]}.")
    after = []
    if isinstance(data.get("radix_insert_ms"), dict):
        after.append("Radix-cache insert with the feed (`bench.radix_insert`), ms: " + ", ".join(
            f"{k} {cell(v)}" for k, v in data["radix_insert_ms"].items()) + ".")
    return Rendered(notes, [table], after)


def render_retrieval_native(data: dict) -> Rendered:
    out = Rendered([line for line in [meta_line(data)] if line])
    table = Table(["bs", "N", "python retrieve µs", "native retrieve µs", "speedup",
                   "native call µs", "call speedup", "python commit µs", "native commit µs",
                   "reference build µs"], title="One step's retrieval, Python vs native")
    table.rows = [[str(r["bs"]), str(r["budget"]), num(r.get("python_retrieve_us"), 1),
                   num(r.get("native_retrieve_us"), 1), num(r.get("speedup"), 1, "x"),
                   num(r.get("native_call_us"), 1), num(r.get("call_speedup"), 1, "x"),
                   num(r.get("python_commit_us"), 1), num(r.get("native_commit_us"), 1),
                   num(r.get("reference_build_us"), 1)] for r in data.get("rows", [])]
    out.tables.append(table)
    if data.get("memory"):
        mem = Table(["text", "tokens", "python bytes / token", "native bytes / token"],
                    title="Shared-corpus memory")
        mem.rows = [[r["text"], str(r["tokens"]), num(r.get("python_bytes_per_token"), 1),
                     num(r.get("native_bytes_per_token"), 1)] for r in data["memory"]]
        out.tables.append(mem)
    return out


def render_radix_insert(data: dict) -> Rendered:
    details = data.get("details") or {}
    cases = [k for k, v in data.items() if k != "details" and isinstance(v, int | float)]
    columns = [k for k, v in details.items() if k != "meta" and isinstance(v, dict)]
    table = Table(["case", "insert with the feed ms",
                   *[c.removesuffix("_ms").replace("_", " ") + " ms" for c in columns]])
    table.rows = [[c, num(data[c], 3), *[num(details[col].get(c), 3) for col in columns]]
                  for c in cases]
    meta = details.get("meta") or {}
    notes = [line for line in [meta_line({"meta": meta}, ("cpu", "cpus", "threads", "reps",
                                                          "load_average_1min"))] if line]
    for key in ("cache", "tokens", "corpus_fill_tokens"):
        if meta.get(key) is not None:
            notes.append(f"{key.replace('_', ' ').capitalize()}: {cell(meta[key])}.")
    return Rendered(notes, [table])


def render_kernels(data: dict) -> Rendered:
    gpu_side = any("gpu_statements_us" in r for r in data.get("rows", []))
    headers = ["bs", "N", "reference µs", "kernel µs", "speedup"]
    if gpu_side:
        headers += ["GPU statements on one thread µs", "faster"]
    table = Table(headers)
    for r in data.get("rows", []):
        row = [str(r["bs"]), str(r["budget"]), num(r.get("reference_us"), 1),
               num(r.get("kernel_us"), 1), num(r.get("speedup"), 1, "x")]
        if gpu_side:
            row += [num(r.get("gpu_statements_us"), 1), str(r.get("faster", "-"))]
        table.rows.append(row)
    mask = ("no mask" if data.get("mask_into") is None else
            f"mask {cell(data.get('mask_mode'))} into a {cell(data.get('mask_into'))}")
    notes = [f"Device {cell(data.get('device'))}, {mask}, draft quotas "
             f"{cell(data.get('quotas'))}, value checks "
             f"{'on' if data.get('check_inputs') else 'off'}, median of "
             f"{cell(data.get('iters'))} runs."]
    return Rendered(notes, [table])


def render_cost_model(data: dict) -> Rendered:
    sizes = data.get("tree_sizes") or []
    verify = Table(["bs", *[f"n = {n}" for n in sizes], "draft pass", "step overhead",
                    "plain step s"],
                   title="Verify cost by tree size n, in plain decode steps of the same bs")
    for i, bs in enumerate(data.get("batch_sizes") or []):
        def at(key: str, i: int = i) -> Any:
            values = data.get(key) or []
            return values[i] if i < len(values) else None
        verify.rows.append([str(bs), *[num(v) for v in at("verify") or []],
                            num(at("draft_pass"), 3), num(at("step_overhead"), 3),
                            num(at("decode_seconds"), 3)])
    out = Rendered([f"Source: {cell(data.get('source'))}; units: {cell(data.get('units'))}."],
                   [verify])
    meta = data.get("meta")
    if isinstance(meta, dict) and meta.get("wall_seconds") is not None:
        out.notes.append(f"{meta_line(data)} Wall {num(meta['wall_seconds'], 1)} s.")
    checks = data.get("checks") or {}
    quotes = data.get("issue_quotes") or {}
    if checks:
        names = list(dict.fromkeys(k for c in checks.values() for k in c))
        table = Table(["check", *checks, "figure quoted in the issue"],
                      title="Checks against the figures the cost-model issue quotes")
        for name in names:
            table.rows.append([name, *[cell(c.get(name)) for c in checks.values()],
                               cell(quotes.get(name, quotes.get(name.replace("_pass",
                                                                             "_level"))))])
        out.tables.append(table)
    return out


def render_score_calibration(data: dict) -> Rendered:
    table = Table(["evaluation set", "variant", "steps", "ECE (all nodes)", "Brier",
                   "predicted tokens / step", "realised", "correlation",
                   "full tree tokens / cost", "cost-aware tokens / cost", "gain"])
    for name, result in data.items():
        if not (name.startswith("eval-") and isinstance(result, dict)):
            continue
        for variant, v in result.items():
            if not (isinstance(v, dict) and "steps" in v and isinstance(v["steps"], dict)):
                continue
            nodes = (v.get("nodes") or {}).get("all") or {}
            steps, sim = v["steps"], v.get("simulated") or {}
            table.rows.append([name.removeprefix("eval-"), variant.replace("_", " "),
                               str(steps.get("steps", "-")), num(nodes.get("ece"), 4),
                               num(nodes.get("brier"), 4), num(steps.get("mean_predicted"), 3),
                               num(steps.get("mean_realised"), 3),
                               num(steps.get("correlation"), 3),
                               num((sim.get("full_tree") or {}).get("tokens_per_unit_cost"), 3),
                               num((sim.get("cost_aware") or {}).get("tokens_per_unit_cost"), 3),
                               num(sim.get("gain"), 3, "x")])
    notes = [line for line in [meta_line(data)] if line]
    meta = data.get("meta") or {}
    if meta.get("cost_model"):
        notes.append(f"Simulated with the cost model `{meta['cost_model']}`; reliability tables "
                     f"per source and decile are in the file.")
    return Rendered(notes, [table])


def record_list(data: Any) -> tuple[str, list[dict]] | None:
    """The first list of records (dicts) at the top level of a generic file."""
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        return "", data
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
                return key, value
    return None


def flat_scalars(data: Any, prefix: str = "", depth: int = 0) -> Iterable[tuple[str, Any]]:
    if isinstance(data, dict) and depth < 3:
        for key, value in data.items():
            yield from flat_scalars(value, f"{prefix}{key}.", depth + 1)
    elif not isinstance(data, dict | list) or (
            isinstance(data, list) and all(not isinstance(v, dict | list) for v in data)):
        yield prefix.rstrip("."), data


def render_generic(data: Any) -> Rendered:
    """A file no renderer knows: its first list of records as a table (scalar columns), else its
    scalar fields (up to ``GENERIC_MAX_FIELDS``)."""
    out = Rendered(["No dedicated renderer: shown generically (add one in "
                    "`bench/summarize.py`)."])
    records = record_list(data)
    if records is not None:
        key, rows = records
        columns: list[str] = []
        for r in rows:
            columns += [k for k, v in r.items() if k not in columns and not isinstance(v, dict)]
        table = Table(columns, title=f"`{key}`" if key else None)
        table.rows = [[cell(r.get(c)) for c in columns] for r in rows]
        out.tables.append(table)
    fields = [(k, v) for k, v in flat_scalars(data)
              if not (records and k.split(".")[0] == records[0])]
    if fields:
        table = Table(["field", "value"], title="Fields" if records else None)
        table.rows = [[f"`{k}`", cell(v)] for k, v in fields[:GENERIC_MAX_FIELDS]]
        out.tables.append(table)
        if len(fields) > GENERIC_MAX_FIELDS:
            out.after.append(f"... and {len(fields) - GENERIC_MAX_FIELDS} more fields.")
    return out


GENERIC_MAX_FIELDS = 40


def render_any(data: Any) -> Rendered:
    """A file of a family without a fixed format: by its shape (a serving record, an offline
    sweep, an engine record with ``methods``), else generically."""
    if serving_rows(data) is not None:
        return render_serving(data)
    if isinstance(data, dict) and isinstance(data.get("runs"), list) and all(
            isinstance(r, dict) and {"method", "settings", "tau"} <= set(r) for r in data["runs"]):
        return render_offline(data)
    if isinstance(data, dict) and isinstance(data.get("methods"), list) and all(
            isinstance(r, dict) and "method" in r for r in data["methods"]):
        return render_engine_methods(data, legacy=False)
    return render_generic(data)


@dataclass(frozen=True)
class Family:
    """Result files of one kind: where they lie, what writes them, how they read."""

    key: str
    title: str
    command: str
    patterns: tuple[str, ...]
    render: Callable[[Any], Rendered]
    accepts: Callable[[Any], bool] = lambda data: True
    root: str = "results"  # "results": patterns under the results directory; "repo": the clone
    newest_first: bool = False  # order the files by their recorded ``date``, newest first


FAMILIES = (
    Family("demo", "`make demo`: SGLang's server on this CPU", "make demo  "
           "# python -m bench.demo", ("demo.json",), render_demo),
    Family("cost_aware", "Cost-aware Graft", "see the producing command recorded in the file",
           ("cost-aware*.json", "cost-aware*/**/*.json", "cost_aware*.json"), render_any),
    Family("overlap", "Overlap schedule", "see the producing command recorded in the file",
           ("*overlap*.json", "*overlap*/**/*.json"), render_any),
    Family("serving", "Serving benchmark: plain, EAGLE3, NGRAM, GRAFT in SGLang",
           "make bench-serving  # python -m bench.serving.run --device cpu|gpu --out DIR",
           ("serving*/**/*.json", "*/**/results.json", "*.json"), render_serving,
           lambda data: serving_rows(data) is not None),
    Family("offline", "Offline engine: every method and paper mode over N",
           "make bench-offline  # python -m bench.offline --dataset mtbench|longctx ...",
           ("offline*/offline_*.json",), render_offline,
           lambda data: isinstance(data, dict) and "runs" in data, newest_first=True),
    Family("calibration", "Threshold calibration", "make calibrate  # python -m bench.calibrate "
           "--budget 16 --prompts 6 --write-head", ("calibration/calibration_N*.json",),
           render_calibration, lambda data: isinstance(data, dict) and "grid" in data),
    Family("head", "The shipped EAGLE-3 head on held-out MT-bench",
           "python -m graft_sglang.eagle3.evaluate --head graft_sglang/eagle3/weights/"
           "smollm2-135m-instruct", (HEAD_EVALS,), render_head_eval, root="repo"),
    Family("retrieval", "Retrieval sources on real token streams",
           "python -m bench.retrieval --target-logits", ("retrieval.json",), render_retrieval),
    Family("retrieval_native", "Suffix retrieval per step: Python vs native",
           "python -m bench.retrieval_native", ("retrieval_native.json",),
           render_retrieval_native),
    Family("tree_build", "Retrieval + tree build per step (PyTorch reference)",
           "make bench  # python -m bench.tree_build", ("tree_build.json",), render_tree_build),
    Family("step_overhead", "Host cost of one serving step's tree",
           "python -m bench.step_overhead", ("step_overhead.json",), render_step_overhead),
    Family("radix_insert", "Radix-cache insert cost with the radix feed",
           "python -m bench.radix_insert", ("radix_insert.json",), render_radix_insert),
    Family("kernels", "Compiled tree build vs the PyTorch reference",
           "python -m bench.kernels --device cpu|cuda [--mask-mode none|full|qlen|bitpack]",
           ("kernels-*.json",), render_kernels),
    Family("cost_model", "Step cost model of the offline engine", "python -m bench.cost_model",
           ("cost-model-*.json",), render_cost_model),
    Family("score_calibration", "Node scores as reach probabilities; cost-aware verify width",
           "python -m bench.score_calibration", ("score-calibration.json",),
           render_score_calibration),
    Family("other", "Other result files", "see each file's producing module under bench/",
           ("**/*.json",), render_generic),
)


def _display(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def collect(results: Path = RESULTS, root: Path = ROOT) -> list[tuple[Family, list[Path]]]:
    """Each family with its files (sorted), every JSON file claimed by the first family whose
    patterns match it and that accepts its content; families without files left out."""
    claimed: set[Path] = set()
    out = []
    for family in FAMILIES:
        base = root if family.root == "repo" else results
        files = []
        for pattern in family.patterns:
            for path in sorted(base.glob(pattern)):
                path = path.resolve()
                if path in claimed or not path.is_file():
                    continue
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if family.accepts(data):
                    claimed.add(path)
                    files.append(path)
        files.sort()
        if family.newest_first:
            files.sort(key=lambda f: str(json.loads(f.read_text()).get("date", "")),
                       reverse=True)
        if files:
            out.append((family, files))
    return out


def anchor(title: str) -> str:
    """GitHub's heading anchor."""
    kept = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def recorded_command(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    command = data.get("command") or meta.get("command")
    return command.strip() if isinstance(command, str) and command.strip() else None


def doc_link(path: Path, root: Path, doc_dir: Path) -> str:
    """``path`` as a link from a document in ``doc_dir`` (relative inside the clone)."""
    doc_dir, path = doc_dir.resolve(), path.resolve()
    if doc_dir.is_relative_to(root) and path.is_relative_to(root):
        up = [".."] * len(doc_dir.relative_to(root).parts)
        return Path(*up, path.relative_to(root)).as_posix()
    return path.as_posix()


def pictures(path: Path) -> list[Path]:
    """The plots written next to a result file (``x.png`` for ``x.json``; a serving run's
    ``tokens_per_s.png``)."""
    found = [path.with_suffix(".png")]
    if path.name == "results.json":
        found.append(path.parent / "tokens_per_s.png")
    return [p for p in found if p.is_file()]


def section(family: Family, files: Sequence[Path], root: Path, doc_dir: Path) -> list[str]:
    lines = [f"## {family.title}", "", f"Written by: `{family.command}`", ""]
    for path in files:
        data = json.loads(path.read_text())
        rendered = family.render(data)
        lines += [f"### [{_display(path, root)}]({doc_link(path, root, doc_dir)})", ""]
        notes = list(rendered.notes)
        recorded = recorded_command(data)
        if recorded:
            notes.insert(0, f"Command recorded in the file: `{recorded}`.")
        for picture in pictures(path):
            notes.append(f"Plot: [{_display(picture, root)}]({doc_link(picture, root, doc_dir)}).")
        for note in notes:
            lines += [note, ""]
        for table in rendered.tables:
            if table.title:
                lines += [f"{table.title}:", ""]
            lines += [table.markdown(), ""]
            if table.footer:
                lines += [table.footer, ""]
        for note in rendered.after:
            lines += [note, ""]
    return lines


def results_doc(results: Path = RESULTS, root: Path = ROOT, out: Path = RESULTS_DOC) -> str:
    """The whole results document (deterministic: only the files' contents enter it)."""
    families = collect(results, root)
    lines = ["# Results", "",
             f"<!-- Generated by `{REGENERATE}` from the JSON files under bench/results/ and the "
             f"shipped head's eval.json. Do not edit: rerun the command. -->", "",
             "Every number below is read from a JSON file in this repository; each section names "
             "the command that writes its files and links them. What the numbers mean, and the "
             "conditions they were taken under, are in [findings.md](findings.md). Measured on a "
             "shared machine: see each file's `meta` / `load_average` for its circumstances.", "",
             "Sections:", ""]
    lines += [f"* [{family.title}](#{anchor(family.title)})" for family, _ in families]
    lines.append("")
    for family, files in families:
        lines += section(family, files, root, out.parent)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="*", help="offline_<dataset>.json files")
    p.add_argument("--results-doc", action="store_true",
                   help="write the results document from every file under --results-dir")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--out", type=Path, default=RESULTS_DOC, help="the results document")
    p.add_argument("--check", action="store_true",
                   help="with --results-doc: write nothing, exit 1 if --out is out of date")
    args = p.parse_args(argv)
    if args.results_doc:
        text = results_doc(args.results_dir, ROOT, args.out)
        if args.check:
            current = args.out.read_text() if args.out.is_file() else ""
            if current != text:
                print(f"{args.out} is out of date: run {REGENERATE}", file=sys.stderr)
                return 1
            return 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
        return 0
    if not args.results:
        p.error("give offline_<dataset>.json files, or --results-doc")
    for path in args.results:
        print(tables(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
