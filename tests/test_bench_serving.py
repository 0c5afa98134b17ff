"""Argument handling and command construction of the serving benchmark (it needs GPUs to run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving.run import (
    bench_command,
    main,
    parse_args,
    server_command,
    server_env,
    summarize,
    table,
    write_dataset,
)

BASE = ["--target", "t", "--draft", "d"]


@pytest.mark.parametrize("argv, message", [
    (["--target", "t"], "--draft is required"),
    ([*BASE, "--topk", "1"], "--topk must be >= 2 for GRAFT"),
    ([*BASE, "--steps", "2", "--topk", "2", "--draft-tokens", "8"], "--draft-tokens must be <= 7"),
    ([*BASE, "--concurrency", "0"], "must be >= 1"),
    ([*BASE, "--methods", "MEDUSA"], "invalid choice"),
    ([*BASE, "--graft-env", "THRESHOLD=0.1"], "SGLANG_GRAFT_NAME=VALUE"),
])
def test_bad_arguments_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_ngram_alone_needs_no_draft() -> None:
    args = parse_args(["--target", "t", "--methods", "ngram", "--topk", "1"])
    assert args.methods == ["NGRAM"]
    cmd = server_command("NGRAM", args)
    assert "--speculative-draft-model-path" not in cmd
    assert cmd[cmd.index("--speculative-num-draft-tokens") + 1] == "32"


def test_commands(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SGLANG_GRAFT_THRESHOLD", "0.3")  # never leaks into other servers
    args = parse_args([*BASE, "--tp", "8", "--eagle3-topk", "4", "--server-args", "--foo 1",
                       "--graft-env", "SGLANG_GRAFT_THRESHOLD=0.05"])
    graft = server_command("GRAFT", args)
    assert graft[graft.index("--speculative-algorithm") + 1] == "GRAFT"
    assert graft[graft.index("--tp-size") + 1] == "8"
    assert "--disable-overlap-schedule" in graft and graft[-2:] == ["--foo", "1"]
    eagle = server_command("EAGLE3", args)
    assert eagle[eagle.index("--speculative-eagle-topk") + 1] == "4"
    assert server_env("GRAFT", args)["SGLANG_GRAFT_THRESHOLD"] == "0.05"
    assert "SGLANG_GRAFT_THRESHOLD" not in server_env("EAGLE3", args)
    cmd = bench_command(tmp_path / "d.jsonl", "longctx", 32, args, tmp_path / "o.jsonl")
    assert cmd[cmd.index("--max-concurrency") + 1] == "32"
    assert cmd[cmd.index("--sharegpt-output-len") + 1] == "512"


def test_dry_run_prints_every_command(capsys) -> None:
    main([*BASE, "--dry-run", "--concurrency", "1", "8"])
    out = capsys.readouterr().out
    assert out.count("sglang.launch_server") == 3
    assert out.count("sglang.benchmark.serving") == 3 * 2 * 2


def test_summary_and_table() -> None:
    row = summarize("GRAFT", "mtbench", 8, {"output_throughput": 1000.0, "mean_tpot_ms": 5.0,
                                              "accept_length": 3.5},
                    {"graft_accepted_draft_tokens": 10, "graft_accepted_grafted_tokens": 0},
                    {"graft_accepted_draft_tokens": 40, "graft_accepted_grafted_tokens": 10})
    assert row["grafted_share"] == 0.25
    assert "| GRAFT | mtbench | 8 | 1000.0 | 5.00 | 3.50 | 0.250 |" in table([row])


def test_dataset_file_is_sglang_custom_jsonl(tmp_path: Path) -> None:
    """SGLang's own custom-dataset reader accepts the file (first turn = our prompt)."""
    from sglang.benchmark.datasets.custom import sample_custom_requests
    from transformers import AutoTokenizer

    from graft_sglang.engine.model import DEFAULT_MODEL, cache_dir, load_model

    if not (cache_dir() / "models" / DEFAULT_MODEL).is_dir():
        load_model()
    tok = AutoTokenizer.from_pretrained(str(cache_dir() / "models" / DEFAULT_MODEL))
    path = write_dataset("mtbench", tmp_path / "mtbench.jsonl")
    rows = sample_custom_requests(str(path), 5, tok, fixed_output_len=64)
    assert len(rows) == 5 and all(r.output_len == 64 for r in rows)
