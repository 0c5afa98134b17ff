"""``RequestSync`` under SGLang 0.5.23's overlap and synchronous schedules, on CPU.

``MiniScheduler`` is SGLang's scheduling loop reduced to what decides when a result is
committed: ``event_loop_overlap``'s order (launch forward k, then process the result of
forward k - 1) or ``event_loop_normal``'s, last prefill merged into the running batch before it
is processed, finished requests filtered, requests whose in-flight result finishes them by
length held out (``_reqs_finishing_inflight``), retraction. Everything that commits tokens and
reports finished requests is SGLang's own: real ``Req`` / ``ScheduleBatch`` /
``GenerationBatchResult`` objects, the real ``SchedulerBatchResultProcessor`` (output append,
finish rules, ``note_request_finished``), the real ``FutureMap`` relaying sequence lengths and
bonus tokens between overlapped forwards. Only the model is a stand-in: a fixed token sequence
per request, verified in runs of a length fixed by (request, position), so both schedules
commit the same tokens.

At every draft the stand-in worker checks the retrieval source's text for each live row
against the committed truth, and against what SGLang itself relays (sequence length + 1 and
the bonus token from the ``FutureMap``); the runs record those texts for the comparison of the
two schedules.
"""

from __future__ import annotations

import json
import random
import types
from array import array
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

sglang = pytest.importorskip("sglang")

from sglang.srt.disaggregation.utils import DisaggregationMode  # noqa: E402
from sglang.srt.managers.overlap_utils import (  # noqa: E402
    FutureMap,
    RelayPayload,
    resolve_forward_inputs,
)
from sglang.srt.managers.schedule_batch import FINISH_ABORT, Req, ScheduleBatch  # noqa: E402
from sglang.srt.managers.scheduler_components.batch_result_processor import (  # noqa: E402
    SchedulerBatchResultProcessor,
)
from sglang.srt.managers.utils import GenerationBatchResult  # noqa: E402
from sglang.srt.model_executor.forward_batch_info import ForwardMode  # noqa: E402
from sglang.srt.plugins import load_plugins  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402
from sglang.srt.server_args import prepare_server_args  # noqa: E402
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker  # noqa: E402
from sglang.srt.speculative.eagle_info import EagleDraftInput  # noqa: E402
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm  # noqa: E402

from graft_sglang.plugin.request_sync import (  # noqa: E402
    DEAD_ROW,
    RequestSync,
    committed_run,
    round_rows,
)
from graft_sglang.retrieval.suffix import SuffixRetriever  # noqa: E402

load_plugins()
EOS, VOCAB, STRIDE, POOL = 1, 12, 4, 32


@pytest.fixture(scope="module")
def scheduler_context(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The process context a GRAFT scheduler publishes (result processing reads it)."""
    path = tmp_path_factory.mktemp("model")
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
        "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2,
        "num_hidden_layers": 1, "vocab_size": VOCAB, "max_position_embeddings": 512}))
    args = prepare_server_args(["--model-path", str(path), "--device", "cpu",
                                "--speculative-algorithm", "GRAFT",
                                "--speculative-draft-model-path", str(path)])
    args.resolve_once()
    context = get_context()
    saved = (context._server_args, context._config_bags, context.parallel._config)
    context.set_server_args(args)
    yield
    context._server_args, context._config_bags, context.parallel._config = saved


class RecordingSource:
    """A retrieval source that keeps each live request's text and the finished documents
    (a request with no text leaves none, as ``SuffixRetriever.finish_request``)."""

    def __init__(self) -> None:
        self.live: dict[str, list[int]] = {}
        self.documents: list[tuple[int, ...]] = []

    def start_request(self, rid: str, prompt: Sequence[int], tenant: object = None) -> None:
        assert rid not in self.live, f"{rid} started twice"
        self.live[rid] = list(prompt)

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        self.live[rid].extend(tokens)

    def finish_request(self, rid: str) -> None:
        text = self.live.pop(rid, None)
        if text:
            self.documents.append(tuple(text))

    def text(self, rid: str) -> list[int]:
        return self.live[rid]


def truth_token(rid: str, position: int) -> int:
    """The stand-in model's token at ``position`` of request ``rid`` (EOS now and then)."""
    rng = random.Random(f"{rid}/{position}")
    return EOS if rng.random() < 0.04 else rng.randrange(2, VOCAB)


def run_length(rid: str, seq_len: int) -> int:
    """Tokens one verify commits for ``rid`` at ``seq_len`` (accepted drafts + bonus)."""
    return random.Random(f"{rid}@{seq_len}").randint(1, STRIDE)


class Noop:
    """Collaborators of the result processor that only count or stream (no state read)."""

    num_generated_tokens = 0
    forward_ct_decode = 0
    page_size = 1

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None

    def supports_mamba(self) -> bool:  # requests here hold no KV: release returns early
        return True


class StandInWorker(BaseSpecWorker):
    """The GRAFT worker's scheduler interface around ``RequestSync``: syncs before each decode
    draft, records after each forward, and checks the source's text of every live row."""

    def __init__(self, sync: RequestSync, source: Any, truths: dict[str, list[int]]) -> None:
        self.sync = sync
        self.source = source
        self.truths = truths
        self.seen: dict[tuple[str, int], tuple[int, ...]] = {}  # (rid, length) -> text at draft
        self.pending_rows = self.dead_rows = 0
        self.finished: list[str] = []

    @property
    def target_worker(self) -> None:
        return None

    @property
    def draft_worker(self) -> None:
        return None

    def note_request_finished(self, *, rid: str, natural_stop: bool) -> None:
        self.finished.append(rid)
        self.sync.finish(rid)

    def forward(self, batch: ScheduleBatch) -> GenerationBatchResult:
        extend = batch.forward_mode.is_extend()
        result = self._prefill(batch) if extend else self._decode(batch)
        self.sync.record(batch.reqs, result)
        return result

    def _prefill(self, batch: ScheduleBatch) -> GenerationBatchResult:
        lens = [len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs]
        tokens = torch.tensor([truth_token(r.rid, n) for r, n in zip(batch.reqs, lens,
                                                                        strict=True)])
        return GenerationBatchResult(
            next_token_ids=tokens, new_seq_lens=torch.tensor(lens),
            next_draft_input=EagleDraftInput(bonus_tokens=tokens))

    def _decode(self, batch: ScheduleBatch) -> GenerationBatchResult:
        behind = [len(r.origin_input_ids) + len(r.output_ids) for r in batch.reqs]
        rids = self.sync.sync(batch.reqs)
        seq_lens = batch.seq_lens.tolist()
        bonus = batch.spec_info.bonus_tokens.tolist()
        ids = torch.zeros(len(rids) * STRIDE, dtype=torch.int64)
        lens = []
        for b, (req, rid) in enumerate(zip(batch.reqs, rids, strict=True)):
            if rid == DEAD_ROW:
                self.dead_rows += 1
            else:
                text = self.source.text(rid)
                truth = self.truths[rid]
                assert text == truth[: len(text)], f"{rid}: indexed text is not the truth"
                assert len(text) == seq_lens[b] + 1, f"{rid}: {len(text)} vs seq_len {seq_lens[b]}"
                assert text[-1] == bonus[b], f"{rid}: last indexed token is not the bonus"
                self.pending_rows += len(text) > behind[b]
                self.seen[rid, len(text)] = tuple(text)
            n = run_length(req.rid, seq_lens[b])
            run = [truth_token(req.rid, seq_lens[b] + 1 + j) for j in range(n)]
            ids[b * STRIDE : b * STRIDE + n] = torch.tensor(run)
            lens.append(n)
        accept_lens = torch.tensor(lens, dtype=torch.int32)
        last = ids.view(-1, STRIDE).gather(1, (accept_lens.long() - 1)[:, None])[:, 0]
        return GenerationBatchResult(
            next_token_ids=ids, accept_lens=accept_lens, speculative_num_draft_tokens=STRIDE,
            new_seq_lens=batch.seq_lens + accept_lens,
            next_draft_input=EagleDraftInput(bonus_tokens=last))


class MiniScheduler:
    """SGLang's loop (see the module docstring). ``arrivals`` step -> requests joining;
    ``aborts`` / ``retractions`` step -> rids aborted when requests are received (as
    ``abort_request``) / retracted when the decode batch is updated (as
    ``update_running_batch``), from that step on, once the request is running;
    ``process_first`` step -> whether that overlapped step processes the last result before
    launching (SGLang's ``is_disable_overlap_for_batch``)."""

    def __init__(self, overlap: bool, sync: RequestSync, worker: StandInWorker,
                 process_first: Callable[[int], bool] = lambda step: False) -> None:
        self.overlap = overlap
        self.sync = sync
        self.worker = worker
        self.process_first = process_first
        self.algo = SpeculativeAlgorithm.from_string("GRAFT")
        pool = types.SimpleNamespace(req_to_token=torch.zeros(POOL, 8, dtype=torch.int32),
                                     req_generation=torch.zeros(POOL, dtype=torch.int64))
        self.future_map = FutureMap(torch.device("cpu"), self.algo, pool)
        self.processor = SchedulerBatchResultProcessor(
            is_generation=True, disaggregation_mode=DisaggregationMode.NULL,
            enable_overlap=overlap, enable_overlap_mlx=False,
            model_config=types.SimpleNamespace(self_opened_think_start_ids=None,
                                               think_end_ids=None),
            token_to_kv_pool_allocator=Noop(), tree_cache=Noop(), hisparse_coordinator=None,
            req_to_token_pool=None, decode_offload_manager=None, metrics_collector=None,
            metrics_reporter=Noop(), draft_worker=worker, model_worker=worker,
            logprob_result_processor=None, output_streamer=Noop(), beam_coordinator=Noop(),
            abort_request=lambda *args: None)
        self.waiting: list[Req] = []
        self.running: list[Req] = []
        self.slot: dict[str, int] = {}  # rid -> req_pool_idx
        self.seq_len: dict[str, int] = {}  # synchronous path: batch.seq_lens per request
        self.bonus: dict[str, int] = {}  # synchronous path: next_draft_input.bonus_tokens
        self.last_batch: ScheduleBatch | None = None
        self.queue: deque[tuple[ScheduleBatch, GenerationBatchResult]] = deque()
        self.to_abort: set[str] = set()
        self.to_retract: set[str] = set()

    def run(self, arrivals: dict[int, list[Req]], steps: int,
            aborts: dict[int, str] | None = None,
            retractions: dict[int, str] | None = None) -> None:
        for step in range(steps):
            self.waiting.extend(arrivals.get(step, []))
            self.to_abort |= {rid for at, rid in (aborts or {}).items() if at == step}
            self.to_retract |= {rid for at, rid in (retractions or {}).items() if at == step}
            self._abort()
            batch = self._next_batch()
            if not self.overlap:
                if batch is not None:
                    self._process(batch.copy(), self._run(batch))
                self.last_batch = batch
                continue
            first = self.process_first(step) and bool(self.queue)
            if first:
                self._process(*self.queue.popleft())
            if batch is not None:
                self.queue.append((batch.copy(), self._run(batch)))
            if self.last_batch is not None and not first:
                self._process(*self.queue.popleft())
            self.last_batch = batch
        while self.queue:
            self._process(*self.queue.popleft())

    def _abort(self) -> None:
        """``abort_request`` for a running request: it finishes at its next processed
        result."""
        for req in self.running:
            if req.rid in self.to_abort and not req.finished():
                req.to_finish = FINISH_ABORT()
                self.to_abort.discard(req.rid)

    def _retract(self) -> None:
        """``retract_decode``: back to the front of the waiting queue, output kept."""
        for req in list(self.running):
            if req.rid in self.to_retract:
                self.running.remove(req)
                req.reset_for_retract()
                self.waiting.insert(0, req)
                self.to_retract.discard(req.rid)

    def _next_batch(self) -> ScheduleBatch | None:
        if self.last_batch is not None and self.last_batch.forward_mode.is_extend():
            self.running += [r for r in self.last_batch.reqs if not r.finished()]
        self.running = [r for r in self.running if not r.finished()]
        if self.waiting:  # prefill first, as get_new_batch_prefill
            reqs, self.waiting = self.waiting[:2], self.waiting[2:]
            for req in reqs:
                req.is_retracted = False  # prepare_for_extend
                self.slot.setdefault(req.rid, len(self.slot) + 1)
            return self._batch(reqs, ForwardMode.EXTEND)
        self._retract()
        in_flight = set(self.queue[0][0].reqs) if self.overlap and self.queue else set()
        reqs = [r for r in self.running
                if not (r in in_flight and r.next_output_finishes_by_length())]
        return self._batch(reqs, ForwardMode.DECODE) if reqs else None

    def _batch(self, reqs: list[Req], mode: ForwardMode) -> ScheduleBatch:
        batch = ScheduleBatch(reqs=reqs, forward_mode=mode, spec_algorithm=self.algo,
                              device="cpu", enable_overlap=self.overlap)
        batch.req_pool_indices = torch.tensor([self.slot[r.rid] for r in reqs])
        if mode.is_extend():
            batch.seq_lens = torch.tensor([len(r.origin_input_ids) + len(r.output_ids)
                                           for r in reqs])
        elif self.overlap:  # lengths and bonus tokens come from the FutureMap relay
            batch.spec_info = EagleDraftInput(future_indices=batch.req_pool_indices)
        else:
            batch.seq_lens = torch.tensor([self.seq_len[r.rid] for r in reqs])
            batch.spec_info = EagleDraftInput(
                bonus_tokens=torch.tensor([self.bonus[r.rid] for r in reqs]))
        return batch

    def _run(self, batch: ScheduleBatch) -> GenerationBatchResult:
        """``Scheduler.run_batch``'s spec-v2 branches (overlap / non-overlap)."""
        indices = batch.req_pool_indices
        if self.overlap:
            self.future_map.resolve_seq_lens_cpu(batch)
            resolve_forward_inputs(batch, self.future_map)
            result = self.worker.forward(batch)
            self.future_map.publish(indices, result.new_seq_lens)
            self.future_map.stash(indices, RelayPayload.from_draft_input(result.next_draft_input))
        else:
            result = self.worker.forward(batch)
            for req, n, token in zip(batch.reqs, result.new_seq_lens.tolist(),
                                     result.next_draft_input.bonus_tokens.tolist(), strict=True):
                self.seq_len[req.rid], self.bonus[req.rid] = n, token
        result.copy_done = torch.get_device_module("cpu").Event()
        result.copy_to_cpu(return_logprob=False, return_hidden_states=False)
        return result

    def _process(self, batch: ScheduleBatch, result: GenerationBatchResult) -> None:
        if batch.forward_mode.is_extend():
            self.processor.process_batch_result_prefill(batch, result)
        else:
            self.processor.process_batch_result_decode(batch, result)


def make_requests(count: int, seed: int, *, ignore_eos: bool = False, join_every: int = 3,
                  max_new: tuple[int, int] = (6, 40),
                  ) -> tuple[dict[int, list[Req]], dict[str, list[int]]]:
    """``count`` requests joining at staggered steps; every 7th finishes at its first token
    (``max_new_tokens`` 1), the others stop at EOS or their length."""
    rng = random.Random(seed)
    arrivals: dict[int, list[Req]] = {}
    truths = {}
    for i in range(count):
        rid = f"r{seed}-{i}"
        prompt = [rng.randrange(2, VOCAB) for _ in range(rng.randint(3, 9))]
        params = SamplingParams(max_new_tokens=1 if i % 7 == 3 else rng.randint(*max_new),
                                ignore_eos=ignore_eos)
        params.normalize(None)
        arrivals.setdefault(rng.randrange(0, join_every * count), []).append(
            Req(rid, "", array("q", prompt), params, eos_token_ids={EOS}))
        truths[rid] = prompt + [truth_token(rid, len(prompt) + j) for j in range(80)]
    return arrivals, truths


def run_schedule(overlap: bool, arrivals: dict[int, list[Req]], truths: dict[str, list[int]],
                 *, record: bool = True, source: RecordingSource | None = None,
                 process_first: Callable[[int], bool] = lambda step: False,
                 **events: dict[int, str]) -> tuple[MiniScheduler, list[Req], RecordingSource]:
    """Run every request to its end under one schedule; ``record`` False: the worker never
    calls ``RequestSync.record`` (its sync then reads the output ids alone)."""
    source = source if source is not None else RecordingSource()
    sync = RequestSync(source)
    if not record:
        sync.record = lambda reqs, result: None
    scheduler = MiniScheduler(overlap, sync, StandInWorker(sync, source, truths), process_first)
    scheduler.run(arrivals, steps=400, **events)
    return scheduler, [r for reqs in arrivals.values() for r in reqs], source


def committed_text(req: Req) -> tuple[int, ...]:
    return (*req.origin_input_ids, *req.output_ids_through_stop)


def decoded(run: MiniScheduler, reqs: list[Req]) -> list[Req]:
    """The requests that were drafted for at least once."""
    drafted = {rid for rid, _ in run.worker.seen}
    return [r for r in reqs if r.rid in drafted]


def check_finished_cleanly(run: MiniScheduler, reqs: list[Req], source: RecordingSource) -> None:
    """Every request finished; each drafted one left exactly its committed text, the others
    (finished at their first token) none; no state is left behind."""
    assert all(r.finished() for r in reqs)
    assert Counter(source.documents) == Counter(committed_text(r) for r in decoded(run, reqs))
    assert set(source.live) <= {DEAD_ROW} and not run.sync.tracked


@pytest.mark.parametrize("seed", [0, 1])
def test_overlapped_state_equals_synchronous(scheduler_context: Any, seed: int) -> None:
    sync_run, sync_reqs, sync_source = run_schedule(False, *make_requests(10, seed))
    over_run, over_reqs, over_source = run_schedule(True, *make_requests(10, seed))
    assert over_run.worker.pending_rows > 0  # the overlap run drafted with a round in flight
    assert sync_run.worker.pending_rows == 0
    assert len(decoded(sync_run, sync_reqs)) < len(sync_reqs)  # some finished at prefill
    assert [committed_text(r) for r in over_reqs] == [committed_text(r) for r in sync_reqs]
    # at each draft of a live request: (request, committed length) -> the source's text
    assert over_run.worker.seen == sync_run.worker.seen
    assert Counter(over_source.documents) == Counter(sync_source.documents)
    check_finished_cleanly(sync_run, sync_reqs, sync_source)
    check_finished_cleanly(over_run, over_reqs, over_source)


def test_output_ids_alone_lag_under_overlap(scheduler_context: Any) -> None:
    """Without the in-flight round (what the synchronous worker read) the text is behind
    what SGLang relays; synchronously the output ids are complete."""
    with pytest.raises(AssertionError, match="seq_len"):
        run_schedule(True, *make_requests(10, 0), record=False)
    run, reqs, source = run_schedule(False, *make_requests(10, 0), record=False)
    check_finished_cleanly(run, reqs, source)


@pytest.mark.parametrize("overlap", [False, True])
def test_aborts_and_retractions(scheduler_context: Any, overlap: bool) -> None:
    arrivals, truths = make_requests(6, 2, ignore_eos=True, join_every=1, max_new=(40, 60))
    run, reqs, source = run_schedule(overlap, arrivals, truths,
                                     aborts={9: "r2-2", 14: "r2-4"},
                                     retractions={8: "r2-0", 9: "r2-1", 16: "r2-0"})
    by_rid = {r.rid: r for r in reqs}
    assert by_rid["r2-0"].retraction_count == 2 and by_rid["r2-1"].retraction_count == 1
    for rid in ("r2-2", "r2-4"):
        assert by_rid[rid].finished_reason.to_json()["type"] == "abort"
    assert set(source.live) <= {DEAD_ROW} and not run.sync.tracked
    finished = Counter(committed_text(r) for r in decoded(run, reqs))
    assert not finished - Counter(source.documents)  # each finished request's text
    for doc in Counter(source.documents) - finished:  # and the retracted ones' at retraction
        assert any(committed_text(by_rid[rid])[: len(doc)] == doc for rid in ("r2-0", "r2-1"))
    assert len(source.documents) == len(finished) + 3


def test_finished_before_draft_gets_dead_row(scheduler_context: Any) -> None:
    """Overlapped steps that process the last result first (SGLang does for consecutive
    prefills, and for grammar batches of algorithms without grammar overlap): a request that
    result finished is still in the batch; it gets ``DEAD_ROW`` and is not tracked again."""
    run, reqs, source = run_schedule(True, *make_requests(10, 3),
                                     process_first=lambda step: True)
    assert run.worker.dead_rows > 0
    check_finished_cleanly(run, reqs, source)


class MirroredSource(RecordingSource):
    """A ``RecordingSource`` that drives the project's ``SuffixRetriever`` alongside."""

    def __init__(self, retriever: SuffixRetriever) -> None:
        super().__init__()
        self.retriever = retriever

    def start_request(self, rid: str, prompt: Sequence[int], tenant: object = None) -> None:
        super().start_request(rid, prompt)
        self.retriever.start_request(rid, prompt, tenant=tenant)

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        super().extend_request(rid, tokens)
        self.retriever.extend_request(rid, tokens)

    def finish_request(self, rid: str) -> None:
        super().finish_request(rid)
        self.retriever.finish_request(rid)


def test_suffix_retriever_through_overlap(scheduler_context: Any) -> None:
    """The project's retriever behind ``RequestSync`` under overlap: it proposes for every
    row (dead rows included) and holds no request at the end."""
    retriever = SuffixRetriever()
    source = MirroredSource(retriever)
    run, reqs, _ = run_schedule(True, *make_requests(8, 4), source=source)
    check_finished_cleanly(run, reqs, source)
    assert set(retriever.live_requests) <= {DEAD_ROW}
    assert retriever.propose(DEAD_ROW, (), 4).tokens == []


@pytest.mark.parametrize("seed", range(3))
def test_committed_run_matches_sglang_finish_rules(seed: int) -> None:
    """``committed_run`` cuts a run where ``Req.update_finish_state`` does (stop tokens of the
    request and its tokenizer, ``max_new_tokens``, ``ignore_eos``) and says whether it
    finishes the request."""
    rng = random.Random(seed)
    for _ in range(300):
        params = SamplingParams(max_new_tokens=rng.randint(1, 12),
                                stop_token_ids=[rng.randrange(2, VOCAB)],
                                ignore_eos=rng.random() < 0.2)
        params.normalize(None)
        req = Req("r", "", array("q", [3, 4]), params, eos_token_ids={EOS})
        if rng.random() < 0.5:  # a tokenizer's EOS and extra stop tokens count too
            req.tokenizer = types.SimpleNamespace(
                eos_token_id=rng.randrange(2, VOCAB),
                additional_stop_token_ids=rng.choice([None, [rng.randrange(2, VOCAB)]]))
        req.output_ids.extend(rng.randrange(2, VOCAB) for _ in range(
            rng.randint(0, params.max_new_tokens - 1)))
        before = len(req.output_ids)
        run = [rng.choice([EOS, *range(2, VOCAB)]) for _ in range(rng.randint(1, 6))]
        cut, finishes = committed_run(req, run, before)
        req.output_ids.extend(run)
        req.update_finish_state(len(run))
        assert finishes == req.finished()
        assert cut == list(req.output_ids_through_stop[before:])


def test_round_rows_reads_the_scheduler_copy(scheduler_context: Any) -> None:
    decode = GenerationBatchResult(next_token_ids=torch.tensor([5, 6, 0, 0, 7, 0, 0, 0]),
                                   accept_lens=torch.tensor([2, 1]),
                                   speculative_num_draft_tokens=4)
    decode.copy_done = torch.get_device_module("cpu").Event()
    decode.copy_to_cpu(return_logprob=False, return_hidden_states=False)
    assert round_rows(decode) == [[5, 6], [7]]
    assert round_rows(GenerationBatchResult(next_token_ids=torch.tensor([3, 9]))) == [[3], [9]]
    assert round_rows(GenerationBatchResult(next_token_ids=None)) == []


def test_pad_values_stay_out_of_the_text() -> None:
    """The text is the unpadded prompt and the output without out-of-vocabulary values;
    lengths still count positions, so the next sync adds exactly the new tokens."""
    source = RecordingSource()
    sync = RequestSync(source, vocab_size=VOCAB)
    params = SamplingParams()
    params.normalize(None)
    req = Req("m", "", array("q", [5, 6, VOCAB + 3, 7]), params)  # an image id, unpadded
    req.origin_input_ids = array("q", [5, 6, VOCAB + 9, VOCAB + 9, VOCAB + 9, 7])
    assert sync.sync([req]) == ["m"]
    assert source.text("m") == [5, 6, 7]
    req.output_ids.extend([8, 9])
    sync.sync([req])
    assert source.text("m") == [5, 6, 7, 8, 9] and sync.indexed("m") == 4 + 2
