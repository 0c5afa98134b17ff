"""SGLang's own server on this CPU (``python -m graft_sglang.cpu.launch_server``), end to end:
plain decoding, EAGLE3 and GRAFT (``graft`` and ``graft-paper`` modes, TP 1 and 2) on the
embedded model with the shipped EAGLE-3 head. Every greedy answer must be token-identical to
transformers' greedy decoding of the same prompt ids. One server per test class, started once,
always ended by pid; a failing test shows the server's log."""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graft_sglang.server_process import ServerProcess
from tests.server_fixtures import (
    COMMON_ARGS,
    MAX_NEW,
    QUESTIONS,
    TREE_ARGS,
    chat_ids,
    generate_ids,
    greedy,
    hf_greedy,
    serve,
    tokenizer,
)

pytestmark = pytest.mark.slow
GRAFT = ("--speculative-algorithm", "GRAFT", *TREE_ARGS, *COMMON_ARGS)
# A prompt longer than the chunked-prefill size (256): prefilled in several chunks.
LONG_QUESTION = ("Summarise the following notes in one sentence.\n"
                 + "\n".join(f"Note {i}: the meeting about project {i % 7} moved to room {i}."
                             for i in range(40)))
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"},
                                           "age": {"type": "integer"}},
          "required": ["name", "age"]}
JSON_QUESTION = "Give a JSON object describing a person named Ada who is 36 years old."


@pytest.fixture(scope="module")
def references() -> dict[str, list[int]]:
    """transformers' greedy answers (MAX_NEW tokens) to every question, by question."""
    return {q: hf_greedy(chat_ids(q), MAX_NEW) for q in (*QUESTIONS, LONG_QUESTION)}


def answer(server: ServerProcess, question: str, **params: Any) -> dict[str, Any]:
    return generate_ids(server, chat_ids(question), greedy(**params))


def concurrent_answers(server: ServerProcess, lengths: list[int]) -> list[list[int]]:
    """Four requests at once, of different lengths."""
    with concurrent.futures.ThreadPoolExecutor(len(lengths)) as pool:
        futures = [pool.submit(answer, server, q, max_new_tokens=n)
                   for q, n in zip(QUESTIONS, lengths, strict=True)]
        return [f.result()["output_ids"] for f in futures]


def graft_state(server: ServerProcess, rank: int = 0) -> dict[str, Any]:
    states = server.internal_states()
    assert len(states) > rank, f"no internal state for rank {rank}: {states}"
    return states[rank]


class Lossless:
    """The checks every speculative server passes (subclasses name the ``server`` fixture)."""

    def test_sequential_identical(self, server: ServerProcess, references: dict) -> None:
        for q in QUESTIONS:
            assert answer(server, q)["output_ids"] == references[q], q

    def test_concurrent_identical(self, server: ServerProcess, references: dict) -> None:
        lengths = [MAX_NEW, 8, 20, 13]
        outs = concurrent_answers(server, lengths)
        for q, n, out in zip(QUESTIONS, lengths, outs, strict=True):
            assert out == references[q][:n], q


@pytest.fixture(scope="module")
def plain() -> Iterator[ServerProcess]:
    """Plain decoding, up for the whole module: the JSON-schema reference comes from it."""
    yield from serve(COMMON_ARGS)


def schema_answer(server: ServerProcess) -> list[int]:
    out = answer(server, JSON_QUESTION, max_new_tokens=48, json_schema=json.dumps(SCHEMA))
    value = json.loads(tokenizer().decode(out["output_ids"], skip_special_tokens=True))
    assert set(value) >= {"name", "age"} and isinstance(value["age"], int), value
    return out["output_ids"]


class TestPlain:
    def test_matches_transformers(self, plain: ServerProcess, references: dict) -> None:
        for q in (*QUESTIONS, LONG_QUESTION):
            assert answer(plain, q)["output_ids"] == references[q], q

    def test_json_schema(self, plain: ServerProcess) -> None:
        schema_answer(plain)


class TestGraft(Lossless):
    @pytest.fixture(scope="class")
    def server(self) -> Iterator[ServerProcess]:
        yield from serve(GRAFT)

    def test_overlap_schedule_on(self, server: ServerProcess) -> None:
        """GRAFT runs SGLang's overlap schedule by default (every check of this class runs
        overlapped; TestGraftSynchronous repeats the lossless ones synchronously)."""
        assert server.server_info()["disable_overlap_schedule"] is False

    def test_long_prompt_identical(self, server: ServerProcess, references: dict) -> None:
        assert answer(server, LONG_QUESTION)["output_ids"] == references[LONG_QUESTION]

    def test_limits_honoured(self, server: ServerProcess, references: dict) -> None:
        q = QUESTIONS[1]
        for n in (1, 2, 5):  # max_new_tokens below one step's accepted tokens
            out = answer(server, q, max_new_tokens=n)
            assert out["output_ids"] == references[q][:n]
            assert out["meta_info"]["finish_reason"]["type"] == "length"
        # a stop string ends the text where plain decoding's text first contains it
        ref_text = tokenizer().decode(references[q], skip_special_tokens=True)
        stop = ref_text.split()[3]
        out = answer(server, q, stop=[stop])
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        assert out["meta_info"]["finish_reason"]["matched"] == stop
        assert out["text"] == ref_text[: ref_text.index(stop)]
        # EOS: a question whose greedy answer ends before 200 tokens
        out = answer(server, QUESTIONS[0], max_new_tokens=200)
        eos = tokenizer().eos_token_id
        assert out["meta_info"]["finish_reason"]["type"] == "stop"
        assert out["output_ids"] == hf_greedy(chat_ids(QUESTIONS[0]), 200)[:len(
            out["output_ids"])]
        assert eos not in out["output_ids"][:-1]

    def test_abort_then_identical(self, server: ServerProcess, references: dict) -> None:
        rid = uuid.uuid4().hex
        errors: list[BaseException] = []

        def long_request() -> None:
            try:
                generate_ids(server, chat_ids(QUESTIONS[3]),
                             greedy(400, ignore_eos=True), rid=rid)
            except Exception as err:  # the aborted request may end with an error status
                errors.append(err)

        thread = threading.Thread(target=long_request)
        thread.start()
        time.sleep(3.0)
        server.post("/abort_request", {"rid": rid})
        thread.join(timeout=120)
        assert not thread.is_alive(), "the aborted request never returned"
        self.test_sequential_identical(server, references)

    def test_json_schema_identical_to_plain(self, server: ServerProcess,
                                            plain: ServerProcess) -> None:
        assert schema_answer(server) == schema_answer(plain)

    def test_spec_counters_count_every_step(self, server: ServerProcess) -> None:
        """The raw counters the serving benchmark takes accept lengths from: one request's
        verify steps, and its accepted tokens (its output but the prefill's token). Under the
        overlap schedule a finished request rides one more verify step in flight, and the last
        steps may accept tokens past the stop: at most N - 1 each."""
        before = graft_state(server)
        meta = answer(server, QUESTIONS[2], max_new_tokens=24)["meta_info"]
        after = graft_state(server)
        steps = after["spec_verify_steps"] - before["spec_verify_steps"]
        assert meta["spec_verify_ct"] <= steps <= meta["spec_verify_ct"] + 1
        accepted = after["spec_accept_tokens"] - before["spec_accept_tokens"]
        assert meta["completion_tokens"] - 1 <= accepted <= meta["completion_tokens"] - 1 + 14

    def test_radix_corpus_raises_acceptance(self, server: ServerProcess) -> None:
        """A repeated request drafts from the radix-fed corpus: longer accepted runs, and a
        grafted share > 0 in /server_info."""
        q = "Continue this list of facts about new places.\n" + "\n".join(
            f"Fact {i}: place {uuid.uuid4().hex[:6]} lies {i} km north." for i in range(12))
        first = answer(server, q, max_new_tokens=48)["meta_info"]["spec_accept_length"]
        before = graft_state(server)
        again = answer(server, q, max_new_tokens=48)["meta_info"]["spec_accept_length"]
        after = graft_state(server)
        assert again > first
        assert after["graft_accepted_grafted_tokens"] > before["graft_accepted_grafted_tokens"]
        assert after["graft_grafted_share"] > 0


    def test_cost_aware_widths(self, server: ServerProcess) -> None:
        """The CPU launcher's default step costs make GRAFT cost-aware: a chat answer's steps
        verify at more than one width of 1, 2, 4, 8 (plain steps included), all counted."""
        before = graft_state(server)
        answer(server, QUESTIONS[0], max_new_tokens=32)
        after = graft_state(server)
        used = {int(k.split("_")[3]): after[k] - before.get(k, 0) for k in after
                if k.startswith("graft_verify_width_")}
        used = {n: c for n, c in used.items() if c > 0}
        assert set(used) <= {1, 2, 4, 8} and len(used) >= 2, used
        assert sum(used.values()) == after["graft_steps"] - before["graft_steps"]


class TestGraftSynchronous(Lossless):
    """GRAFT serves with SGLang's overlap schedule by default (its CPU relay gather comes from
    the stand-in's platform); ``--disable-overlap-schedule`` gives the synchronous schedule,
    which must answer the same. The default servers above run overlapped."""

    @pytest.fixture(scope="class")
    def server(self) -> Iterator[ServerProcess]:
        yield from serve((*GRAFT, "--disable-overlap-schedule"))

    def test_schedules_reported(self, server: ServerProcess) -> None:
        assert server.server_info()["disable_overlap_schedule"] is True


class TestGraftPaper(Lossless):
    @pytest.fixture(scope="class")
    def server(self) -> Iterator[ServerProcess]:
        yield from serve(GRAFT, env={"SGLANG_GRAFT_MODE": "graft-paper",
                                     "SGLANG_GRAFT_STAGE_LEVELS": "0,1,2",
                                     "SGLANG_GRAFT_COST_TABLE": "none"})

    def test_whole_trees_without_costs(self, server: ServerProcess) -> None:
        """``SGLANG_GRAFT_COST_TABLE=none``: every step verifies the whole tree (no width
        counters, no plain steps)."""
        answer(server, QUESTIONS[1], max_new_tokens=16)
        state = graft_state(server)
        assert state["graft_plain_steps"] == 0
        assert not [k for k in state if k.startswith("graft_verify_width_")]


class TestEagle3(Lossless):
    @pytest.fixture(scope="class")
    def server(self) -> Iterator[ServerProcess]:
        yield from serve(("--speculative-algorithm", "EAGLE3", *TREE_ARGS, *COMMON_ARGS))


def rank_counters(server: ServerProcess) -> dict[str, str]:
    """The last per-source acceptance log line of each TP rank (``SGLANG_GRAFT_LOG_INTERVAL=1``:
    one per verify step), by rank: /server_info reports rank 0's state only."""
    last: dict[str, str] = {}
    for line in server.log_path.read_text(errors="replace").splitlines():
        found = re.search(r" (TP\d+)\] graft: (\d+ steps, .*)$", line)
        if found:
            last[found.group(1)] = found.group(2)
    return last


class TestTensorParallel:
    @pytest.fixture(scope="class")
    def server(self) -> Iterator[ServerProcess]:
        yield from serve((*GRAFT, "--tp-size", "2"), env={"SGLANG_GRAFT_LOG_INTERVAL": "1"})

    def test_identical_and_ranks_agree(self, server: ServerProcess, references: dict) -> None:
        for q in QUESTIONS[:2]:
            assert answer(server, q)["output_ids"] == references[q], q
        lengths = [MAX_NEW, 8, 20, 13]
        for q, n, out in zip(QUESTIONS, lengths, concurrent_answers(server, lengths),
                             strict=True):
            assert out == references[q][:n], q
        counters = rank_counters(server)
        assert set(counters) == {"TP0", "TP1"} and counters["TP0"] == counters["TP1"], counters
        state = graft_state(server)
        assert counters["TP0"].startswith(f"{state['graft_steps']} steps, accepted draft tokens "
                                          f"{state['graft_accepted_draft_tokens']}, grafted "
                                          f"{state['graft_accepted_grafted_tokens']} ")

    def test_abort_does_not_hang(self, server: ServerProcess, references: dict) -> None:
        rid = uuid.uuid4().hex
        thread = threading.Thread(target=lambda: generate_ids(
            server, chat_ids(QUESTIONS[3]), greedy(300, ignore_eos=True), rid=rid))
        thread.start()
        time.sleep(3.0)
        server.post("/abort_request", {"rid": rid})
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert answer(server, QUESTIONS[0])["output_ids"] == references[QUESTIONS[0]]


@pytest.mark.parametrize("flags, named", [
    (("--speculative-eagle-topk", "1", "--speculative-num-steps", "3",
      "--speculative-num-draft-tokens", "4"), "--speculative-eagle-topk"),
    (("--speculative-num-steps", "2", "--speculative-eagle-topk", "2",
      "--speculative-num-draft-tokens", "64"), "--speculative-num-draft-tokens"),
    (("--speculative-adaptive",), "--speculative-adaptive"),
])
def test_refusal_through_the_launcher(flags: tuple[str, ...], named: str) -> None:
    """A refused GRAFT argument ends the launcher with exit code 2 and a message naming the
    flag, before any server process starts (no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "graft_sglang.cpu.launch_server",
                           "--speculative-algorithm", "GRAFT", *flags, "--port", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
