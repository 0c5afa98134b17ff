"""The documents stay true to the repository: ``docs/results.md`` is what the recorded JSON files
give (``python -m bench.summarize --results-doc``), every result family present gets a section
with one table row per record, the README's ``python -m`` / ``make`` commands exist, and every
relative link in the README and ``docs/`` resolves."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from bench import summarize

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_results_doc_is_the_generated_one() -> None:
    committed = summarize.RESULTS_DOC.read_text()
    assert committed == summarize.results_doc(), (
        f"docs/results.md is out of date with bench/results/: run {summarize.REGENERATE}")


def expected_rows(key: str, data: dict) -> int | None:
    """Records a family's file holds, counted from its JSON independently of the renderer
    (None: not a row-per-record family)."""
    if key in ("demo", "serving", "cost_aware", "overlap") and summarize.serving_rows(data):
        return len(summarize.serving_rows(data))
    if key == "demo":
        return len(data["methods"])
    if key == "offline":
        return sum("budget" in r["settings"] for r in data["runs"])
    if key == "calibration":
        return len(data["grid"])
    if key == "retrieval":
        return sum(len(s["rows"]) for s in data["streams"].values()) + len(data["batched"])
    if key == "retrieval_native":
        return len(data["rows"]) + len(data.get("memory", []))
    if key in ("tree_build", "step_overhead", "kernels"):
        return len(data["rows"])
    if key == "radix_insert":
        return sum(isinstance(v, int | float) for k, v in data.items() if k != "details")
    if key == "cost_model":
        return len(data["batch_sizes"]) + len({k for c in data["checks"].values() for k in c})
    if key == "score_calibration":
        return sum(isinstance(v, dict) and isinstance(v.get("steps"), dict)
                   for name, result in data.items() if name.startswith("eval-")
                   for v in result.values())
    return None


def test_every_family_present_has_a_section_with_a_row_per_record() -> None:
    families = summarize.collect()
    keys = {family.key for family, _ in families}
    results = summarize.RESULTS
    assert {"offline", "kernels"} <= keys  # the committed results
    for name, key in (("demo.json", "demo"), ("step_overhead.json", "step_overhead"),
                      ("tree_build.json", "tree_build"), ("radix_insert.json", "radix_insert"),
                      ("retrieval.json", "retrieval")):
        assert not (results / name).is_file() or key in keys, name
    if any(results.glob("serving*/**/results.json")):
        assert keys & {"serving", "overlap", "cost_aware"}
    doc = summarize.RESULTS_DOC.read_text()
    for family, files in families:
        assert f"\n## {family.title}\n" in doc
        for path in files:
            data = json.loads(path.read_text())
            shown = path.resolve().relative_to(ROOT).as_posix()
            assert f"### [{shown}](../{shown})" in doc
            expected = expected_rows(family.key, data)
            if expected is not None:
                rendered = family.render(data)
                assert sum(len(t.rows) for t in rendered.tables) == expected, shown


def serving_record(methods: list[str]) -> dict:
    rows = [{"method": m, "workload": w, "concurrency": c, "tokens_per_s": 10.0 + i,
             "accept_length": None if m == "PLAIN" else 1.5, "grafted_share":
             0.25 if m.startswith("GRAFT") else None, "identical_to_plain": True}
            for i, m in enumerate(methods) for w in ("mtbench", "longctx") for c in (1, 2)]
    return {"server": "sglang 0.5.23", "rows": rows}


def test_every_family_renders_and_absent_ones_are_skipped(tmp_path: Path) -> None:
    results = tmp_path / "bench" / "results"
    (results / "serving-cpu").mkdir(parents=True)
    (results / "overlap").mkdir()
    demo = serving_record(["PLAIN", "EAGLE3", "NGRAM", "GRAFT"])
    demo["methods"] = demo.pop("rows")
    (results / "demo.json").write_text(json.dumps(demo))
    (results / "serving-cpu" / "results.json").write_text(
        json.dumps(serving_record(["PLAIN", "GRAFT"])))
    (results / "overlap" / "results.json").write_text(
        json.dumps(serving_record(["PLAIN", "GRAFT", "GRAFT-SYNC"])))
    (results / "cost-aware.json").write_text(json.dumps(
        {"meta": {"command": "python -m bench.cost_aware"},
         "rows": [{"bs": 1, "gain": 1.1}, {"bs": 4, "gain": 1.2, "note": "x"}]}))
    (results / "mystery.json").write_text(json.dumps({"a": {"b": 1.5}, "c": [1, 2]}))
    (results / "broken.json").write_text("{not json")
    out = tmp_path / "docs" / "results.md"
    doc = summarize.results_doc(results, tmp_path, out)
    titles = re.findall(r"^## (.+)$", doc, re.M)
    by_key = {f.key: f.title for f in summarize.FAMILIES}
    assert titles == [by_key[k] for k in ("demo", "cost_aware", "overlap", "serving", "other")]
    for family, files in summarize.collect(results, tmp_path):
        for path in files:
            data = json.loads(path.read_text())
            expected = expected_rows(family.key, data)
            if expected is not None:
                assert sum(len(t.rows) for t in family.render(data).tables) == expected
    assert "(../bench/results/serving-cpu/results.json)" in doc
    assert "| GRAFT-SYNC | longctx | 2 | 1.50 | 12.0 | 1.20x | 0.25 | yes |" in doc
    assert "Command recorded in the file: `python -m bench.cost_aware`." in doc
    assert "| `a.b` | 1.5 |" in doc and "broken.json" not in doc
    assert summarize.main(["--results-doc", "--results-dir", str(results), "--out", str(out),
                           "--check"]) == 1


def test_the_offline_sweep_tables_still_print(capsys: pytest.CaptureFixture[str]) -> None:
    paths = sorted(summarize.RESULTS.glob("offline*/offline_*.json"))
    if not paths:
        pytest.skip("no offline sweep recorded")
    assert summarize.main([str(p) for p in paths]) == 0
    out = capsys.readouterr().out
    assert "N = 16:" in out and "| method | tau |" in out and "Fastest at N = 16" in out


def code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code spans of a markdown text."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, re.S)
    rest = re.sub(r"```.*?```", "", text, flags=re.S)
    return fenced + re.findall(r"`([^`]+)`", rest)


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in re.findall(r"^([A-Za-z0-9_.\- ]+):(?!=)", text, re.M)
            for t in line.split()}


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_commands_exist(doc: Path) -> None:
    targets = make_targets()
    modules, makes = set(), set()
    for span in code_spans(doc.read_text()):
        modules |= set(re.findall(r"python -m ([A-Za-z_][\w.]*[A-Za-z0-9_])", span))
        makes |= set(re.findall(r"(?:^|[\s;&(])make ([a-z][\w-]*)", span))
    if doc == README:
        assert {"graft_sglang.cpu.launch_server", "sglang.launch_server"} <= modules
        assert {"demo", "test"} <= makes
    for name in sorted(modules):
        if name.split(".")[0] == "sglang":
            pytest.importorskip("sglang")
        assert importlib.util.find_spec(name) is not None, f"{doc.name}: python -m {name}"
    assert not makes - targets, f"{doc.name}: make targets missing: {makes - targets}"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    text = doc.read_text()
    anchors = {summarize.anchor(t.replace("`", "")) for t in re.findall(r"^#+ (.+)$", text,
                                                                         re.M)}
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, fragment = target.partition("#")
        if not path:
            assert fragment in anchors, f"{doc.name}: no heading for #{fragment}"
            continue
        resolved = (doc.parent / path).resolve()
        assert resolved.exists(), f"{doc.name}: {target} does not exist"
        if fragment and resolved.suffix == ".md":
            there = {summarize.anchor(t.replace("`", ""))
                     for t in re.findall(r"^#+ (.+)$", resolved.read_text(), re.M)}
            assert fragment in there, f"{doc.name}: {target}: no such heading"
