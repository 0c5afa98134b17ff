"""Serving benchmark: EAGLE-3 vs NGRAM vs GRAFT in stock SGLang, same target, same prompts.

For each method this launches ``python -m sglang.launch_server``, runs
``python -m sglang.benchmark.serving`` on each dataset at each concurrency, reads SGLang's result
line (throughput, TPOT, accept length) and the GRAFT counters from ``/server_info``, stops the
server, and writes ``results.jsonl`` and ``table.md`` under ``--out``. Needs GPUs; see
``bench/serving/README.md`` for the commands. ``--dry-run`` prints the commands only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

METHODS = ("EAGLE3", "NGRAM", "GRAFT")
DATASETS = ("mtbench", "longctx")
OUTPUT_LEN = {"mtbench": 256, "longctx": 512}
GRAFT_COUNTERS = ("graft_accepted_draft_tokens", "graft_accepted_grafted_tokens")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="target model path or HF id")
    p.add_argument("--draft", help="EAGLE-3 head path or HF id (needed by EAGLE3 and GRAFT)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), type=str.upper,
                   choices=METHODS)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--concurrency", nargs="+", type=_positive, default=[1, 8, 32])
    p.add_argument("--num-prompts", type=_positive, default=80,
                   help="prompts per (dataset, concurrency) run")
    p.add_argument("--tp", type=_positive, default=1, help="--tp-size of every server")
    p.add_argument("--steps", type=_positive, default=5, help="--speculative-num-steps")
    p.add_argument("--topk", type=_positive, default=8, help="--speculative-eagle-topk")
    p.add_argument("--draft-tokens", type=_positive, default=32,
                   help="--speculative-num-draft-tokens (N)")
    p.add_argument("--eagle3-topk", type=_positive, default=None,
                   help="EAGLE3's own --speculative-eagle-topk (default: --topk)")
    p.add_argument("--graft-env", nargs="*", default=[], metavar="SGLANG_GRAFT_X=V",
                   help="Graft settings for the GRAFT server (see README)")
    p.add_argument("--port", type=_positive, default=30000)
    p.add_argument("--server-args", default="", help="extra launch_server arguments, quoted")
    p.add_argument("--startup-timeout", type=_positive, default=1800, help="seconds")
    p.add_argument("--out", type=Path, default=Path("bench/results/serving"))
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    if {"EAGLE3", "GRAFT"} & set(args.methods) and not args.draft:
        p.error("--draft is required for EAGLE3 and GRAFT")
    if "GRAFT" in args.methods and args.topk < 2:
        p.error(f"--topk must be >= 2 for GRAFT, got {args.topk}")
    limit = 1 + args.topk + (args.steps - 1) * args.topk ** 2
    if {"EAGLE3", "GRAFT"} & set(args.methods) and args.draft_tokens > limit:
        p.error(f"--draft-tokens must be <= {limit} for --steps {args.steps} and --topk "
                f"{args.topk}, got {args.draft_tokens}")
    for item in args.graft_env:
        key, sep, _ = item.partition("=")
        if not sep or not key.startswith("SGLANG_GRAFT_"):
            p.error(f"--graft-env takes SGLANG_GRAFT_NAME=VALUE items, got {item!r}")
    return args


def server_command(method: str, args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.target,
           "--tp-size", str(args.tp), "--port", str(args.port),
           "--speculative-algorithm", method]
    if method == "NGRAM":
        cmd += ["--speculative-num-draft-tokens", str(args.draft_tokens)]
    else:
        topk = (args.eagle3_topk or args.topk) if method == "EAGLE3" else args.topk
        cmd += ["--speculative-draft-model-path", args.draft,
                "--speculative-num-steps", str(args.steps),
                "--speculative-eagle-topk", str(topk),
                "--speculative-num-draft-tokens", str(args.draft_tokens)]
    if method == "GRAFT":
        cmd += ["--disable-overlap-schedule"]
    return cmd + shlex.split(args.server_args)


def server_env(method: str, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGLANG_GRAFT_")}
    if method == "GRAFT":
        env.update(item.split("=", 1) for item in args.graft_env)
    return env


def write_dataset(name: str, path: Path) -> Path:
    """The prompts as SGLang's ``custom`` JSONL (a user turn and an empty assistant turn; the
    output length is fixed by ``--sharegpt-output-len``)."""
    from graft_sglang.datasets import load

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in load(name):
            turns = [{"role": "user", "content": row["prompt"]},
                     {"role": "assistant", "content": ""}]
            f.write(json.dumps({"conversations": turns}) + "\n")
    return path


def bench_command(dataset: Path, name: str, concurrency: int, args: argparse.Namespace,
                  output: Path) -> list[str]:
    return [sys.executable, "-m", "sglang.benchmark.serving", "--backend", "sglang",
            "--port", str(args.port), "--dataset-name", "custom", "--dataset-path", str(dataset),
            "--num-prompts", str(args.num_prompts), "--max-concurrency", str(concurrency),
            "--sharegpt-output-len", str(OUTPUT_LEN[name]), "--apply-chat-template",
            "--output-file", str(output)]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def wait_for_server(port: int, timeout: int, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health_generate", timeout=10)
            return
        except OSError:
            time.sleep(5)
    raise TimeoutError(f"the server did not come up within {timeout} s")


def graft_counters(port: int) -> dict[str, int]:
    states = _get_json(f"http://127.0.0.1:{port}/server_info").get("internal_states") or [{}]
    return {k: int(states[0].get(k, 0)) for k in GRAFT_COUNTERS}


def summarize(method: str, name: str, concurrency: int, result: dict,
              before: dict[str, int], after: dict[str, int]) -> dict:
    """One table row from SGLang's result line and the GRAFT counters around the run."""
    draft, grafted = (after[k] - before[k] for k in GRAFT_COUNTERS)
    return {"method": method, "dataset": name, "concurrency": concurrency,
            "output_throughput": result["output_throughput"],
            "mean_tpot_ms": result["mean_tpot_ms"], "accept_length": result.get("accept_length"),
            "grafted_share": grafted / (draft + grafted) if draft + grafted else None}


def table(rows: list[dict]) -> str:
    head = "| method | dataset | conc. | tok/s | TPOT ms | accept len | grafted share |"
    lines = [head, "|" + "---|" * 7]
    for r in rows:
        accept = "-" if r["accept_length"] is None else f"{r['accept_length']:.2f}"
        share = "-" if r["grafted_share"] is None else f"{r['grafted_share']:.3f}"
        lines.append(f"| {r['method']} | {r['dataset']} | {r['concurrency']} | "
                     f"{r['output_throughput']:.1f} | {r['mean_tpot_ms']:.2f} | {accept} | "
                     f"{share} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> list[dict]:
    data = {name: args.out / "data" / f"{name}.jsonl" for name in args.datasets}
    rows = []
    for method in args.methods:
        command = server_command(method, args)
        print("$", shlex.join(command), flush=True)
        if args.dry_run:
            for name, conc in ((n, c) for n in args.datasets for c in args.concurrency):
                print("$", shlex.join(bench_command(data[name], name, conc, args,
                                                    args.out / "raw.jsonl")))
            continue
        for name, path in data.items():
            if not path.exists():
                write_dataset(name, path)
        server = subprocess.Popen(command, env=server_env(method, args), start_new_session=True)
        try:
            wait_for_server(args.port, args.startup_timeout, server)
            for name in args.datasets:
                for conc in args.concurrency:
                    raw = args.out / f"raw_{method}_{name}_c{conc}.jsonl"
                    before = graft_counters(args.port)
                    subprocess.run(bench_command(data[name], name, conc, args, raw), check=True)
                    result = json.loads(raw.read_text().splitlines()[-1])
                    rows.append(summarize(method, name, conc, result, before,
                                          graft_counters(args.port)))
                    print(table(rows[-1:]), flush=True)
        finally:
            os.killpg(server.pid, signal.SIGTERM)  # the server's own process group
            server.wait()
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    rows = run(args)
    if rows:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "results.jsonl").open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        (args.out / "table.md").write_text(table(rows) + "\n")
        print(table(rows))


if __name__ == "__main__":
    main()
