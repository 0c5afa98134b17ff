"""Markdown tables of an offline sweep (``bench.offline``'s JSON): one block per tree size N,
every method and mode side by side, and the winner per N by tokens/s and by tau.

    python -m bench.summarize bench/results/offline-eagle3/offline_mtbench.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def label(run: dict) -> str:
    s = run["settings"]
    name = run["method"]
    extras = []
    if s.get("threshold") is not None:
        extras.append(f"t={s['threshold']:g}")
    if s.get("retrieval") and s.get("retrieval") != "suffix" and name in ("graft", "retrieval"):
        extras.append(s["retrieval"])
    return f"{name} ({', '.join(extras)})" if extras else name


def tables(result: dict) -> str:
    runs = result["runs"]
    ar = next(r for r in runs if r["method"] == "autoregressive")
    lines = [f"{result['dataset']}: {result['prompts']} prompts, {result['max_new_tokens']} new "
             f"tokens, {result['threads']} thread(s); plain decoding "
             f"{ar['tokens_per_s']:.1f} tok/s", ""]
    for n in sorted({r["settings"]["budget"] for r in runs if "budget" in r["settings"]}):
        rows = [r for r in runs if r["settings"].get("budget") == n]
        lines += [f"N = {n}:", "",
                  "| method | tau | draft passes / step | verified / step | tok/s | speedup | "
                  "grafted | identical |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            lines.append(
                f"| {label(r)} | {r['tau']:.2f} | {r['draft_forwards_per_step']:.2f} | "
                f"{r['verified_per_step']:.1f} | {r['tokens_per_s']:.1f} | "
                f"{r['speedup']:.2f}x | {r['grafted_share']:.0%} | "
                f"{'yes' if r['identical'] else 'NO'} |")
        fastest = max(rows, key=lambda r: r["tokens_per_s"])
        longest = max(rows, key=lambda r: r["tau"])
        lines += ["", f"Fastest at N = {n}: {label(fastest)} ({fastest['tokens_per_s']:.1f} "
                  f"tok/s); longest accepted: {label(longest)} (tau {longest['tau']:.2f}).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path, nargs="+", help="offline_<dataset>.json files")
    args = p.parse_args(argv)
    for path in args.results:
        print(tables(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
