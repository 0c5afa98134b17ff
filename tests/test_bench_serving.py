"""The serving benchmark's argument handling, commands and bookkeeping (its real runs against
CPU servers are ``make demo`` / ``make bench-serving``; the servers themselves are tested in
test_server_cpu.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving.run import (
    Run,
    bench_command,
    compare_with_plain,
    measure,
    parse_args,
    server_args,
    server_env,
    table,
    write_workload,
)

ZERO = {"spec_accept_tokens": 0.0, "spec_verify_steps": 0.0,
        "graft_accepted_draft_tokens": 0.0, "graft_accepted_grafted_tokens": 0.0}


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--target is required"),
    (["--device", "gpu", "--target", "t"], "--draft is required"),
    (["--topk", "1"], "--topk must be >= 2 for GRAFT"),
    (["--steps", "2", "--topk", "2", "--draft-tokens", "8"], "--draft-tokens must be <= 7"),
    (["--concurrency", "0"], "must be >= 1"),
    (["--methods", "MEDUSA"], "invalid choice"),
    (["--graft-env", "THRESHOLD=0.1"], "SGLANG_GRAFT_NAME=VALUE"),
])
def test_bad_arguments_refused(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_server_arguments_per_method() -> None:
    args = parse_args(["--tp", "2", "--server-args", "--foo 1", "--graft-env",
                       "SGLANG_GRAFT_MODE=graft-paper"])
    assert "--speculative-algorithm" not in server_args("PLAIN", args)
    ngram = server_args("NGRAM", args)
    assert ngram[ngram.index("--speculative-num-draft-tokens") + 1] == "8"
    assert "--speculative-eagle-topk" not in ngram
    graft = server_args("GRAFT", args)
    assert graft[graft.index("--speculative-algorithm") + 1] == "GRAFT"
    assert graft[graft.index("--tp-size") + 1] == "2" and graft[-2:] == ["--foo", "1"]
    assert "--model-path" not in graft  # on cpu: the launcher's embedded model
    gpu = parse_args(["--device", "gpu", "--target", "t", "--draft", "d"])
    eagle = server_args("EAGLE3", gpu)
    assert eagle[eagle.index("--model-path") + 1] == "t"
    assert eagle[eagle.index("--speculative-draft-model-path") + 1] == "d"
    assert server_env("GRAFT", args) == {"SGLANG_GRAFT_MODE": "graft-paper"}
    assert server_env("EAGLE3", args) == {}


def test_bench_command_is_greedy_without_warmup(tmp_path: Path) -> None:
    args = parse_args(["--output-len", "40"])
    cmd = bench_command(1234, tmp_path / "d.jsonl", 4, args, tmp_path / "o.jsonl")
    assert cmd[cmd.index("--max-concurrency") + 1] == "4"
    assert cmd[cmd.index("--sharegpt-output-len") + 1] == "40"
    assert cmd[cmd.index("--temperature") + 1] == "0"
    assert cmd[cmd.index("--warmup-requests") + 1] == "0"
    assert "--output-details" in cmd


def test_accept_length_and_share_from_counters() -> None:
    after = {"spec_accept_tokens": 300.0, "spec_verify_steps": 100.0,
             "graft_accepted_draft_tokens": 30.0, "graft_accepted_grafted_tokens": 10.0}
    run = measure("GRAFT", "mtbench", 1, {"output_throughput": 12.5,
                                          "generated_texts": ["a", "b"]}, ZERO, after)
    assert run.accept_length == 3.0 and run.grafted_share == 0.25
    eagle = measure("EAGLE3", "mtbench", 1, {"output_throughput": 9.0}, ZERO, after)
    assert eagle.grafted_share is None
    plain = measure("PLAIN", "mtbench", 1, {"output_throughput": 10.0}, ZERO, ZERO)
    assert plain.accept_length == 1.0


def test_identity_and_table() -> None:
    runs = [Run("PLAIN", "code-edit", 1, 10.0, 1.0, None, ["x", "y"]),
            Run("GRAFT", "code-edit", 1, 15.0, 3.0, 0.5, ["x", "y"]),
            Run("NGRAM", "code-edit", 1, 11.0, 2.0, None, ["x", "z"]),
            Run("EAGLE3", "code-edit", 2, 9.0, 2.0, None, ["x", "y"])]
    compare_with_plain(runs)
    assert [r.identical_to_plain for r in runs] == [True, True, False, None]
    text = table([r.row() for r in runs])
    assert "| GRAFT | code-edit | 1 | 3.00 | 15.0 | 1.50x | 0.50 | yes |" in text
    assert "| NGRAM | code-edit | 1 | 2.00 | 11.0 | 1.10x | - | NO |" in text


def test_workload_file_is_sglang_custom_jsonl(tmp_path: Path) -> None:
    """SGLang's own custom-dataset reader accepts the file (first turn = our prompt)."""
    from sglang.benchmark.datasets.custom import sample_custom_requests
    from transformers import AutoTokenizer

    from graft_sglang.cpu.launch_server import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    path = write_workload("code-edit", tmp_path / "code-edit.jsonl")
    rows = sample_custom_requests(str(path), 3, tok, fixed_output_len=64)
    assert len(rows) == 3 and all(r.output_len == 64 for r in rows)
    assert all("Here is a Python function" in r.prompt for r in rows)


def test_graft_sync_is_graft_without_the_overlap_schedule() -> None:
    args = parse_args(["--methods", "graft", "graft-sync",
                       "--graft-env", "SGLANG_GRAFT_MODE=graft"])
    sync, overlap = server_args("GRAFT-SYNC", args), server_args("GRAFT", args)
    assert sync[sync.index("--speculative-algorithm") + 1] == "GRAFT"
    assert "--disable-overlap-schedule" in sync and "--disable-overlap-schedule" not in overlap
    assert server_env("GRAFT-SYNC", args) == server_env("GRAFT", args) == {
        "SGLANG_GRAFT_MODE": "graft"}


def test_graft_whole_is_graft_without_step_costs() -> None:
    args = parse_args(["--methods", "graft", "graft-whole"])
    whole = server_args("GRAFT-WHOLE", args)
    assert whole[whole.index("--speculative-algorithm") + 1] == "GRAFT"
    assert whole == server_args("GRAFT", args)
    assert server_env("GRAFT-WHOLE", args) == {"SGLANG_GRAFT_COST_TABLE": "none"}
    assert server_env("GRAFT", args) == {}


def test_cost_aware_cells_compare_graft_with_the_best_other_method() -> None:
    from bench.cost_aware import cells

    rows = [{"workload": "mtbench", "concurrency": 1, "method": m, "tokens_per_s": t}
            for m, t in (("PLAIN", 10.0), ("EAGLE3", 12.0), ("NGRAM", 8.0), ("GRAFT", 15.0),
                         ("GRAFT-WHOLE", 9.0))]
    rows.append({"workload": "longctx", "concurrency": 4, "method": "PLAIN", "tokens_per_s": 1.0})
    (cell,) = cells(rows)  # the longctx cell has no GRAFT row
    assert cell["best_other"] == "EAGLE3"
    assert cell["graft_vs_best"] == 15.0 / 12.0 and cell["graft_vs_plain"] == 1.5
    assert cell["graft_whole_vs_best"] == 9.0 / 12.0


def test_a_starved_kv_pool_is_refused_before_measuring() -> None:
    from bench.serving.run import MIN_KV_TOKENS, check_kv_pool

    class Server:
        def __init__(self, tokens: int) -> None:
            self.tokens = tokens

        def server_info(self) -> dict:
            return {"max_total_num_tokens": self.tokens}

    check_kv_pool(Server(MIN_KV_TOKENS), "GRAFT")
    with pytest.raises(RuntimeError, match="GRAFT server got a KV pool of 37 tokens"):
        check_kv_pool(Server(37), "GRAFT")
