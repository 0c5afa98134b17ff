"""Cost-aware GRAFT on SGLang's CPU server, side by side (not a test): plain decoding, EAGLE3,
NGRAM, GRAFT (cost-aware: the CPU launcher's step costs), GRAFT-WHOLE (no step costs: the whole
tree every step) and GRAFT-SYNC (cost-aware on the synchronous schedule), on MT-bench, code-edit
and long-context prompts at concurrency 1 and 4, greedy, every answer checked against plain's.

    python -m bench.cost_aware [--num-prompts 4] [--output-len 64]
    python -m bench.cost_aware --from DIR --measured-with "python -m bench.serving.run ..."

(``--from``: the ``results.json`` of a ``bench.serving.run --out DIR``, e.g. one with fewer
methods per run where too many servers would not fit in memory side by side; ``--name``: the
file's name.) Writes ``bench/results/cost-aware.json``: ``{"server", "command",
"measured_with", "rows": [{"workload",
"concurrency", "method", "tokens_per_s", "accept_length", "grafted_share",
"identical_to_plain"}], "cells": [{"workload", "concurrency", "best_other", "graft_vs_best",
"graft_vs_plain", "graft_whole_vs_best"}]}`` and ``cost-aware.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.serving.run import add_arguments, check_arguments, plot, run, server_version, table

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["PLAIN", "EAGLE3", "NGRAM", "GRAFT", "GRAFT-WHOLE", "GRAFT-SYNC"]
OTHERS = ("PLAIN", "EAGLE3", "NGRAM")


def cells(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (workload, concurrency): the best of plain / EAGLE3 / NGRAM and GRAFT's ratios."""
    out = []
    for key in dict.fromkeys((r["workload"], r["concurrency"]) for r in rows):
        by = {r["method"]: r["tokens_per_s"] for r in rows
              if (r["workload"], r["concurrency"]) == key}
        others = {m: by[m] for m in OTHERS if m in by}
        if not others or "GRAFT" not in by:
            continue
        best = max(others, key=others.get)
        out.append({"workload": key[0], "concurrency": key[1], "best_other": best,
                    "graft_vs_best": by["GRAFT"] / others[best],
                    "graft_vs_plain": by["GRAFT"] / by["PLAIN"] if "PLAIN" in by else None,
                    "graft_whole_vs_best": (by["GRAFT-WHOLE"] / others[best]
                                            if "GRAFT-WHOLE" in by else None)})
    return out


def write(rows: list[dict[str, Any]], server: str, command: str, measured_with: str,
          name: str) -> dict[str, Any]:
    report = {"server": server, "command": command, "measured_with": measured_with,
              "rows": rows, "cells": cells(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(rows, RESULTS / f"{name}.png", "Cost-aware GRAFT: SGLang on this CPU")
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--from", dest="source", type=Path,
                   help="a bench.serving.run --out directory to take results.json from")
    p.add_argument("--measured-with", default="",
                   help="with --from: the command that measured it (recorded)")
    p.add_argument("--name", default="cost-aware", help="result file name under bench/results")
    p.set_defaults(methods=METHODS, workloads=["mtbench", "code-edit", "longctx"],
                   concurrency=[1, 4], num_prompts=4, output_len=64,
                   out=Path("/tmp/graft-cost-aware"))
    args = p.parse_args(argv)
    check_arguments(p, args)
    command = "python -m bench.cost_aware " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.source is not None:
        data = json.loads((args.source / "results.json").read_text())
        rows, server = data["rows"], data["server"]
    else:
        rows = [r.row() for r in run(args, log=lambda line: print(line, flush=True))]
        server = server_version()
    report = write(rows, server, command.strip(), args.measured_with or command.strip(),
                   args.name)
    print(table(rows))
    for c in report["cells"]:
        print(f"{c['workload']} c={c['concurrency']}: GRAFT {c['graft_vs_best']:.2f}x "
              f"{c['best_other']}")
    return report


if __name__ == "__main__":
    main()
