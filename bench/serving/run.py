"""Serving benchmark: plain decoding vs EAGLE3 vs NGRAM vs GRAFT in stock SGLang, side by side.

For each method and concurrency a fresh server starts (``--device cpu``: this repository's CPU
launcher, ``graft_sglang.cpu.launch_server``; ``--device gpu``: ``python -m
sglang.launch_server``), SGLang's own ``python -m sglang.benchmark.serving`` runs every workload
against it (``custom`` JSONL datasets written from ``graft_sglang.datasets``, greedy, fixed
output length, no warm-up request: a warm-up would hand the first prompt's answer to every
method that retrieves), and the server is ended. Per run it records output tokens/s, the accept
length and GRAFT's grafted share and draft stops (both from ``/server_info`` counters read
before and after the run), and whether every generated text equals plain decoding's. Results:
``results.json`` (``{"server", "rows"}``), ``table.md`` and ``tokens_per_s.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graft_sglang.datasets import DATASETS, load
from graft_sglang.server_process import CPU_LAUNCHER, GPU_LAUNCHER, ServerProcess

# GRAFT-SYNC: GRAFT on SGLang's synchronous schedule (--disable-overlap-schedule); every other
# method runs the schedule SGLang gives it (on CPU SGLang turns overlap off for its own ones).
# GRAFT-WHOLE: GRAFT without step costs (SGLANG_GRAFT_COST_TABLE=none): the whole tree, every
# draft level, every step.
METHODS = ("PLAIN", "EAGLE3", "NGRAM", "GRAFT", "GRAFT-WHOLE", "GRAFT-SYNC")
TREE_METHODS = ("EAGLE3", "GRAFT", "GRAFT-WHOLE", "GRAFT-SYNC")
DEFAULT_METHODS = ("PLAIN", "EAGLE3", "NGRAM", "GRAFT")
# The smallest KV pool a measured server may have: the longest workload prompt and its output.
MIN_KV_TOKENS = 4096
# Counters of /server_info's internal state read around each run (summed over ranks: rank 0's).
COUNTERS = ("spec_accept_tokens", "spec_verify_steps", "graft_accepted_draft_tokens",
            "graft_accepted_grafted_tokens")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: graft_sglang.cpu.launch_server; gpu: sglang.launch_server")
    p.add_argument("--target", help="target model (default on cpu: the embedded model)")
    p.add_argument("--draft", help="EAGLE-3 head for EAGLE3 and GRAFT (default on cpu: the "
                   "shipped head)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), type=str.upper,
                   choices=METHODS)
    p.add_argument("--workloads", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--concurrency", nargs="+", type=_positive, default=[1, 2, 4])
    p.add_argument("--num-prompts", type=_positive, default=4,
                   help="prompts per (workload, concurrency) run")
    p.add_argument("--output-len", type=_positive, default=96, help="new tokens per request")
    p.add_argument("--tp", type=_positive, default=1, help="--tp-size of every server")
    p.add_argument("--steps", type=_positive, default=3, help="--speculative-num-steps")
    p.add_argument("--topk", type=_positive, default=4, help="--speculative-eagle-topk")
    p.add_argument("--draft-tokens", type=_positive, default=8,
                   help="--speculative-num-draft-tokens (N), for every speculative method")
    p.add_argument("--graft-env", nargs="*", default=[], metavar="SGLANG_GRAFT_X=V",
                   help="Graft settings for the GRAFT server")
    p.add_argument("--server-args", default="", help="extra launch_server arguments, quoted")
    p.add_argument("--seed", type=int, default=1, help="the benchmark's prompt-order seed")
    p.add_argument("--startup-timeout", type=_positive, default=1800, help="seconds")
    p.add_argument("--out", type=Path, default=Path("bench/results/serving-cpu"))
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.device == "gpu" and args.target is None:
        p.error("--target is required with --device gpu")
    if args.device == "gpu" and set(TREE_METHODS) & set(args.methods) and not args.draft:
        p.error("--draft is required for EAGLE3 and GRAFT with --device gpu")
    if any(m.startswith("GRAFT") for m in args.methods) and args.topk < 2:
        p.error(f"--topk must be >= 2 for GRAFT, got {args.topk}")
    limit = 1 + args.topk + (args.steps - 1) * args.topk ** 2
    if set(TREE_METHODS) & set(args.methods) and args.draft_tokens > limit:
        p.error(f"--draft-tokens must be <= {limit} for --steps {args.steps} and --topk "
                f"{args.topk}, got {args.draft_tokens}")
    for item in args.graft_env:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("SGLANG_GRAFT_"):
            p.error(f"--graft-env takes SGLANG_GRAFT_NAME=VALUE items, got {item!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    check_arguments(p, args)
    return args


def server_args(method: str, args: argparse.Namespace) -> list[str]:
    """``launch_server`` arguments of one method (the same tree size for every method)."""
    out = ["--tp-size", str(args.tp)]
    if args.target:
        out += ["--model-path", args.target]
    if method == "NGRAM":
        out += ["--speculative-algorithm", "NGRAM",
                "--speculative-num-draft-tokens", str(args.draft_tokens)]
    elif method in TREE_METHODS:
        out += ["--speculative-algorithm", method.split("-")[0],
                "--speculative-num-steps", str(args.steps),
                "--speculative-eagle-topk", str(args.topk),
                "--speculative-num-draft-tokens", str(args.draft_tokens)]
        if args.draft:
            out += ["--speculative-draft-model-path", args.draft]
        if method.endswith("-SYNC"):
            out += ["--disable-overlap-schedule"]
    return out + shlex.split(args.server_args)


def server_env(method: str, args: argparse.Namespace) -> dict[str, str]:
    """``--graft-env`` settings, for the GRAFT servers only (GRAFT-WHOLE: no step costs)."""
    if not method.startswith("GRAFT"):
        return {}
    env = dict(item.split("=", 1) for item in args.graft_env)
    if method == "GRAFT-WHOLE":
        env["SGLANG_GRAFT_COST_TABLE"] = "none"
    return env


def write_workload(name: str, path: Path) -> Path:
    """A workload as SGLang's ``custom`` JSONL (a user turn and an empty assistant turn; the
    output length is fixed by ``--sharegpt-output-len``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in load(name):
            turns = [{"role": "user", "content": row["prompt"]},
                     {"role": "assistant", "content": ""}]
            f.write(json.dumps({"conversations": turns}) + "\n")
    return path


def bench_command(port: int, dataset: Path, concurrency: int, args: argparse.Namespace,
                  output: Path) -> list[str]:
    """The arguments of ``python -m sglang.benchmark.serving`` for one run."""
    return ["--backend", "sglang",
            "--host", "127.0.0.1", "--port", str(port), "--dataset-name", "custom",
            "--dataset-path", str(dataset), "--num-prompts", str(args.num_prompts),
            "--max-concurrency", str(concurrency), "--sharegpt-output-len",
            str(args.output_len), "--apply-chat-template", "--temperature", "0",
            "--warmup-requests", "0", "--seed", str(args.seed), "--disable-tqdm",
            "--output-details", "--output-file", str(output)]


def serving_benchmark(argv: list[str], log_path: Path) -> None:
    """``python -m sglang.benchmark.serving <argv>``, in this process (its imports are paid
    once per benchmark, not once per run), its output in ``log_path``."""
    from sglang.benchmark import serving

    saved = sys.argv
    sys.argv = ["sglang.benchmark.serving", *argv]
    try:
        with open(log_path, "w") as out, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            serving.cli_main()
    finally:
        sys.argv = saved


def counters(server: ServerProcess) -> dict[str, float]:
    state = (server.internal_states() or [{}])[0]
    return {k: float(state.get(k, 0) or 0) for k in COUNTERS}


@dataclass
class Run:
    """One (method, workload, concurrency) measurement."""

    method: str
    workload: str
    concurrency: int
    tokens_per_s: float
    accept_length: float | None
    grafted_share: float | None
    texts: list[str]
    identical_to_plain: bool | None = None

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "texts"}


def measure(method: str, workload: str, concurrency: int, result: dict[str, Any],
            before: dict[str, float], after: dict[str, float]) -> Run:
    """A ``Run`` from SGLang's result line and the counters around it."""
    delta = {k: after[k] - before[k] for k in COUNTERS}
    accept = (delta["spec_accept_tokens"] / delta["spec_verify_steps"]
              if delta["spec_verify_steps"] > 0 else (None if method != "PLAIN" else 1.0))
    grafted = delta["graft_accepted_grafted_tokens"]
    accepted = grafted + delta["graft_accepted_draft_tokens"]
    share = grafted / accepted if method.startswith("GRAFT") and accepted > 0 else None
    return Run(method, workload, concurrency, float(result["output_throughput"]), accept,
               share, list(result.get("generated_texts") or []))


def compare_with_plain(runs: list[Run]) -> None:
    """Set ``identical_to_plain`` where a PLAIN run of the same workload and concurrency exists."""
    plain = {(r.workload, r.concurrency): r.texts for r in runs if r.method == "PLAIN"}
    for r in runs:
        ref = plain.get((r.workload, r.concurrency))
        if ref is not None:
            r.identical_to_plain = r.texts == ref and len(ref) > 0


def new_server(method: str, concurrency: int, args: argparse.Namespace) -> ServerProcess:
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return ServerProcess(server_args(method, args), env=server_env(method, args),
                         log_path=logs / f"server_{method}_c{concurrency}.log",
                         startup_timeout=args.startup_timeout,
                         launcher=CPU_LAUNCHER if args.device == "cpu" else GPU_LAUNCHER)


def run_workloads(server: ServerProcess, method: str, concurrency: int,
                  args: argparse.Namespace, data: dict[str, Path], log=print) -> list[Run]:
    """Every workload against one ready server, one after the other."""
    runs = []
    for workload, path in data.items():
        raw = args.out / "raw" / f"{method}_{workload}_c{concurrency}.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.unlink(missing_ok=True)
        before = counters(server)
        t0 = time.monotonic()
        serving_benchmark(bench_command(server.port, path, concurrency, args, raw),
                          args.out / "logs" / f"bench_{method}_{workload}_c{concurrency}.log")
        result = json.loads(raw.read_text().splitlines()[-1])
        run = measure(method, workload, concurrency, result, before, counters(server))
        runs.append(run)
        accept = "-" if run.accept_length is None else f"{run.accept_length:.2f}"
        log(f"[serving] {method} {workload} c={concurrency}: {run.tokens_per_s:.1f} tok/s, "
            f"accept {accept} ({time.monotonic() - t0:.0f} s)")
    return runs


def server_version() -> str:
    from importlib.metadata import version

    return f"sglang {version('sglang')}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: one line per run, speedup against plain decoding of the same cell."""
    plain = {(r["workload"], r["concurrency"]): r["tokens_per_s"]
             for r in rows if r["method"] == "PLAIN"}
    head = ("| method | workload | conc. | accept length | tok/s | speedup vs plain | "
            "grafted share | identical to plain |")
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        base = plain.get((r["workload"], r["concurrency"]))
        speed = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        accept = "-" if r["accept_length"] is None else f"{r['accept_length']:.2f}"
        share = "-" if r["grafted_share"] is None else f"{r['grafted_share']:.2f}"
        same = {True: "yes", False: "NO", None: "-"}[r["identical_to_plain"]]
        lines.append(f"| {r['method']} | {r['workload']} | {r['concurrency']} | {accept} | "
                     f"{r['tokens_per_s']:.1f} | {speed} | {share} | {same} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: tokens/s per (workload, concurrency), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = sorted({(r["workload"], r["concurrency"]) for r in rows},
                   key=lambda c: (DATASETS.index(c[0]) if c[0] in DATASETS else 99, c[1]))
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cells)), 4))
    for i, m in enumerate(methods):
        values = [next((r["tokens_per_s"] for r in rows if r["method"] == m
                        and (r["workload"], r["concurrency"]) == c), 0.0) for c in cells]
        ax.bar([j + i * width for j in range(len(cells))], values, width, label=m)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(cells))])
    ax.set_xticklabels([f"{w}\nc={c}" for w, c in cells])
    ax.set_ylabel("output tokens/s")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_kv_pool(server: ServerProcess, method: str) -> None:
    """Refuse to measure a server whose KV pool cannot hold one request of the workload:
    SGLang sizes the pool from the memory free while it starts, so too many servers starting
    side by side on a small machine leave the last ones a few tokens (their requests fail)."""
    tokens = int(server.server_info().get("max_total_num_tokens") or 0)
    if 0 < tokens < MIN_KV_TOKENS:
        raise RuntimeError(f"the {method} server got a KV pool of {tokens} tokens (< "
                           f"{MIN_KV_TOKENS}): too little memory was free while the servers "
                           f"started side by side; run fewer --methods at once")


def run(args: argparse.Namespace, log=print) -> list[Run]:
    """Per concurrency: every method's fresh server starts side by side, and once all are up
    (an idle server sleeps, so it does not disturb the others' measurements) each is measured
    alone and ended."""
    data = {w: write_workload(w, args.out / "data" / f"{w}.jsonl") for w in args.workloads}
    runs: list[Run] = []
    for concurrency in args.concurrency:
        if args.dry_run:
            for method in args.methods:
                launcher = CPU_LAUNCHER if args.device == "cpu" else GPU_LAUNCHER
                print("$", shlex.join(["python", "-m", launcher, *server_args(method, args)]))
                for path in data.values():
                    print("$", shlex.join(["python", "-m", "sglang.benchmark.serving",
                                           *bench_command(0, path, concurrency, args,
                                                          Path("raw.jsonl"))]))
            continue
        started = time.monotonic()
        servers = {m: new_server(m, concurrency, args) for m in args.methods}
        try:
            for server in servers.values():
                server.spawn()
            # Every server is up before the first is measured: one still starting would take
            # the cores from the measured one.
            for method, server in servers.items():
                server.wait_ready()
                check_kv_pool(server, method)
            log(f"[serving] c={concurrency}: {len(servers)} servers up after "
                f"{time.monotonic() - started:.0f} s")
            for method, server in servers.items():
                runs.extend(run_workloads(server, method, concurrency, args, data, log))
                server.stop()
        finally:
            for server in servers.values():
                server.stop()
    compare_with_plain(runs)
    return runs


def write_results(rows: list[dict[str, Any]], out: Path, key: str = "rows",
                  title: str = "SGLang serving benchmark") -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"server": server_version(), key: rows},
                                                 indent=1) + "\n")
    (out / "table.md").write_text(table(rows) + "\n")
    plot(rows, out / "tokens_per_s.png", title)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    runs = run(args)
    if runs:
        rows = [r.row() for r in runs]
        write_results(rows, args.out)
        print(table(rows))


if __name__ == "__main__":
    main()
