"""Serving benchmark recipe: EAGLE-3 vs NGRAM vs GRAFT on one target, on a GPU server.

For each algorithm: launch ``python -m sglang.launch_server`` for the target, wait until it
serves, run ``python -m sglang.benchmark.serving`` on MT-bench-style and long-context prompts at
each concurrency, stop the server; then tabulate output throughput, median TPOT, accept length
and (GRAFT) the share of accepted tokens that came from grafted nodes (from the worker's log).

Examples (see bench/serving/README.md):

    python -m bench.serving.run --target Qwen/Qwen3-235B-A22B --draft <eagle3-head> --tp 8
    python -m bench.serving.run --target meta-llama/Llama-3.1-8B-Instruct \
        --draft <eagle3-head> --tp 1 --dry-run      # print the commands only

It cannot run on a CPU machine; ``--dry-run`` shows exactly what it would run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ALGORITHMS = ("EAGLE3", "NGRAM", "GRAFT")
DATASETS = ("mtbench", "longctx")
GRAFT_LOG = re.compile(r"graft: (\d+) steps, accepted draft tokens (\d+), grafted (\d+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="target model path or hub id")
    p.add_argument("--draft", help="EAGLE-3 draft head (needed by EAGLE3 and GRAFT)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument("--num-prompts", type=int, default=80)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="--speculative-num-steps")
    p.add_argument("--topk", type=int, default=8, help="--speculative-eagle-topk")
    p.add_argument("--draft-tokens", type=int, default=32,
                   help="--speculative-num-draft-tokens")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--out", type=Path, default=Path("bench/results/serving"))
    p.add_argument("--graft-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra SGLANG_GRAFT_* settings for the GRAFT server")
    p.add_argument("--ready-timeout", type=int, default=1800)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if args.tp < 1 or args.num_prompts < 1 or args.output_len < 4:
        p.error("--tp and --num-prompts must be >= 1 and --output-len >= 4")
    if any(c < 1 for c in args.concurrency):
        p.error("--concurrency values must be >= 1")
    if {"EAGLE3", "GRAFT"} & set(args.algorithms) and not args.draft:
        p.error("--draft (an EAGLE-3 head) is required for EAGLE3 and GRAFT")
    if args.topk < 2 and "GRAFT" in args.algorithms:
        p.error("--topk must be >= 2 for GRAFT")
    for kv in args.graft_env:
        if "=" not in kv or not kv.startswith("SGLANG_GRAFT_"):
            p.error(f"--graft-env takes SGLANG_GRAFT_KEY=VALUE, got {kv!r}")
    return args


def server_command(args: argparse.Namespace, algorithm: str) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.target,
           "--tp-size", str(args.tp), "--port", str(args.port),
           "--speculative-algorithm", algorithm]
    if algorithm in ("EAGLE3", "GRAFT"):
        cmd += ["--speculative-draft-model-path", args.draft,
                "--speculative-num-steps", str(args.steps),
                "--speculative-eagle-topk", str(args.topk),
                "--speculative-num-draft-tokens", str(args.draft_tokens)]
    if algorithm == "GRAFT":
        cmd += ["--disable-overlap-schedule"]
    return cmd


def client_command(args: argparse.Namespace, dataset_file: Path, concurrency: int,
                   out_file: Path) -> list[str]:
    return [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang",
            "--port", str(args.port), "--dataset-name", "custom",
            "--dataset-path", str(dataset_file), "--num-prompts", str(args.num_prompts),
            "--sharegpt-output-len", str(args.output_len), "--apply-chat-template",
            "--max-concurrency", str(concurrency), "--output-file", str(out_file)]


def write_dataset(name: str, path: Path) -> Path:
    """The prompts as SGLang's ``custom`` JSONL (a user turn and an empty assistant turn)."""
    from bench.datasets import load

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in load(name):
            f.write(json.dumps({"conversations": [{"content": row["prompt"]},
                                                  {"content": ""}]}) + "\n")
    return path


def wait_ready(port: int, timeout: int) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(5)
    raise TimeoutError(f"server on port {port} not ready after {timeout} s")


def grafted_share(log: str) -> float | None:
    found = GRAFT_LOG.findall(log)
    if not found:
        return None
    _, draft, grafted = (int(x) for x in found[-1])
    return grafted / (draft + grafted) if draft + grafted else 0.0


def tabulate(rows: list[dict]) -> str:
    head = f"{'algorithm':<8} {'dataset':<8} {'conc':>4} {'out tok/s':>10} {'TPOT ms':>8} " \
           f"{'accept':>7} {'grafted':>8}"
    lines = [head]
    for r in rows:
        share = "-" if r["grafted_share"] is None else f"{r['grafted_share']:.3f}"
        accept = "-" if r["accept_length"] is None else f"{r['accept_length']:.2f}"
        lines.append(f"{r['algorithm']:<8} {r['dataset']:<8} {r['concurrency']:>4} "
                     f"{r['output_throughput']:>10.1f} {r['median_tpot_ms']:>8.2f} "
                     f"{accept:>7} {share:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    graft_env = dict(kv.split("=", 1) for kv in args.graft_env)
    rows = []
    for algorithm in args.algorithms:
        server = server_command(args, algorithm)
        if args.dry_run:
            env = " ".join(f"{k}={v}" for k, v in graft_env.items()) if algorithm == "GRAFT" \
                else ""
            print(f"{env} {shlex.join(server)}".strip())
            for name in args.datasets:
                for c in args.concurrency:
                    out = args.out / f"{algorithm}-{name}-c{c}.jsonl"
                    print(shlex.join(client_command(args, args.out / f"{name}.jsonl", c, out)))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        log_path = args.out / f"{algorithm}-server.log"
        env = {**os.environ, **(graft_env if algorithm == "GRAFT" else {})}
        with log_path.open("w") as log:
            proc = subprocess.Popen(server, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(args.port, args.ready_timeout)
            for name in args.datasets:
                data = write_dataset(name, args.out / f"{name}.jsonl")
                for c in args.concurrency:
                    out = args.out / f"{algorithm}-{name}-c{c}.jsonl"
                    subprocess.run(client_command(args, data, c, out), check=True)
                    result = json.loads(out.read_text().splitlines()[-1])
                    rows.append({
                        "algorithm": algorithm, "dataset": name, "concurrency": c,
                        "output_throughput": result["output_throughput"],
                        "median_tpot_ms": result["median_tpot_ms"],
                        "accept_length": result.get("accept_length"),
                        "grafted_share": grafted_share(log_path.read_text())
                        if algorithm == "GRAFT" else None,
                    })
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    if rows:
        print(tabulate(rows))
        (args.out / "summary.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
