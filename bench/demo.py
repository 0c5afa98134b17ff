"""``make demo``: the product on this CPU. SGLang's own server serves the embedded model in turn
with plain decoding, EAGLE3, NGRAM and GRAFT (same model, same EAGLE-3 head, same 8-node tree),
SGLang's serving benchmark runs a small mixed workload against each (MT-bench questions, code
edits, long-context rewrites; concurrency 1, greedy), every answer is checked against plain
decoding's, and one table is printed. Writes ``bench/results/demo.json`` and ``demo.png``.

Run: ``python -m bench.demo [--num-prompts 2] [--output-len 64]`` (the serving benchmark's other
options apply too; see ``python -m bench.serving.run --help``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.serving.run import add_arguments, check_arguments, plot, run, server_version, table

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(concurrency=[1], num_prompts=2, output_len=64, out=None)
    args = p.parse_args(argv)
    check_arguments(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="graft-demo-"))
    args.out = args.out or work
    started = time.monotonic()
    print(f"[demo] {len(args.methods)} servers x {len(args.workloads)} workloads x "
          f"{args.num_prompts} prompts x {args.output_len} tokens; logs in {args.out}/logs",
          flush=True)
    rows = [r.row() for r in run(args, log=lambda line: print(line, flush=True))]
    report = {"server": server_version(), "methods": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, RESULTS / "demo.png", "make demo: SGLang on this CPU, concurrency 1")
    print(table(rows))
    print(f"[demo] {time.monotonic() - started:.0f} s; wrote {RESULTS / 'demo.json'} and "
          f"{RESULTS / 'demo.png'}")
    if args.out == work:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
