"""The serving-benchmark recipe's argument handling and bookkeeping (it runs only on GPUs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.serving.run import grafted_share, main, parse_args, tabulate, write_dataset


def test_dry_run_prints_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--target", "Qwen/Qwen3-235B-A22B", "--draft", "/heads/qwen3-eagle3", "--tp", "8",
          "--concurrency", "1", "32", "--graft-env", "SGLANG_GRAFT_THRESHOLD=0.2", "--dry-run"])
    out = capsys.readouterr().out.splitlines()
    servers = [line for line in out if "sglang.launch_server" in line]
    clients = [line for line in out if "sglang.benchmark.serving" in line]
    assert len(servers) == 3 and len(clients) == 3 * 2 * 2
    graft = next(line for line in servers if "GRAFT" in line)
    assert graft.startswith("SGLANG_GRAFT_THRESHOLD=0.2 ")
    assert "--tp-size 8" in graft and "--speculative-eagle-topk 8" in graft
    ngram = next(line for line in servers if "NGRAM" in line)
    assert "--speculative-draft-model-path" not in ngram
    assert any("--max-concurrency 32" in line for line in clients)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "t"], "--draft"),
        (["--target", "t", "--draft", "d", "--tp", "0"], "--tp"),
        (["--target", "t", "--draft", "d", "--concurrency", "0"], "--concurrency"),
        (["--target", "t", "--draft", "d", "--topk", "1"], "--topk"),
        (["--target", "t", "--draft", "d", "--graft-env", "THRESHOLD=1"], "--graft-env"),
        (["--target", "t", "--algorithms", "SUFFIX"], "invalid choice"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_ngram_alone_needs_no_draft() -> None:
    assert parse_args(["--target", "t", "--algorithms", "NGRAM"]).draft is None


def test_grafted_share_and_table() -> None:
    log = "x\ngraft: 200 steps, accepted draft tokens 300, grafted 100 (share 0.250)\n" \
          "graft: 400 steps, accepted draft tokens 600, grafted 400 (share 0.400)\n"
    assert grafted_share(log) == pytest.approx(0.4)
    assert grafted_share("no graft lines") is None
    table = tabulate([{"algorithm": "GRAFT", "dataset": "mtbench", "concurrency": 8,
                       "output_throughput": 1234.5, "median_tpot_ms": 6.7,
                       "accept_length": 3.21, "grafted_share": 0.4}])
    assert "GRAFT" in table and "1234.5" in table and "0.400" in table


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
