"""``GraftWorker``: SGLang's EAGLE V2 worker with Graft's tree in place of the dense EAGLE tree.

Everything except tree construction is SGLang's own code path: the draft loop and its CUDA
graphs, the target verify forward and its graphs, greedy / target-only sampling verification,
KV compaction of the accepted path and draft extend. Two module-level functions of
``eagle_worker_v2`` are substituted while the draft worker runs:

* ``organize_draft_results`` -> ``all_candidates``: keep every candidate and its cumulative
  confidence (SGLang's version keeps the top N-1 tokens and drops the scores). The 4-tuple
  shape that the draft CUDA-graph runner captures is unchanged: (parent_list, scores, tokens,
  draft_probs).
* ``build_eagle_verify_input`` -> ``build_graft_verify_input``: prune, retrieve, graft, emit.

The substitution lasts exactly one call (single scheduler thread) and covers graph capture,
since the capture calls the draft worker's own ``draft_forward``.

Stop-drafting checkpoints (graft-paper; in graft mode, "every request's best path is below the
threshold"): an eager draft loop also runs with ``select_top_k_tokens`` wrapped
(``plugin/checkpoints.py``) and stops as soon as the whole batch has stopped, skipping the
remaining draft forward passes. With CUDA graphs the level-0 checkpoint is decided before the
graph (from the draft-extend's top-k, no pass needed): a batch that stops there skips the graph
and drafts nothing; deeper checkpoints of a graph-replayed loop set each request's draft quota
(masking) but save no pass. Each request's stage is recomputed from the candidate scores, so
both paths split the budget identically.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from sglang.srt.speculative import eagle_worker_v2
from sglang.srt.speculative.eagle_worker_v2 import EagleDraftWorker, EAGLEWorkerV2

from graft_sglang.calibration import load_calibration
from graft_sglang.plugin.checkpoints import (
    CheckpointedSelect,
    StopDrafting,
    capturing,
    level_stops,
)
from graft_sglang.plugin.radix_feed import RadixFeed
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.plugin.verify_input import GraftVerifyInput, build_graft_verify_input
from graft_sglang.proposer import GraftProposer
from graft_sglang.retrieval.successor import SuccessorTable
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.tree.builder import count_grafted

logger = logging.getLogger(__name__)
LOG_EVERY = 200  # steps between per-source acceptance log lines


def all_candidates(
    score_list: list[torch.Tensor], token_list: list[torch.Tensor],
    parents_list: list[torch.Tensor], num_draft_token: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replacement of ``organize_draft_results``: (parent_list [bs, 1 + (S-1)K],
    scores [bs, M], tokens [bs, M]) with every candidate kept."""
    scores = torch.cat([s.flatten(1) for s in score_list], dim=1)
    tokens = torch.cat(token_list, dim=1)
    if len(parents_list) > 1:
        parent_list = torch.cat(parents_list[:-1], dim=1)
    else:
        parent_list = torch.empty(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
    return parent_list, scores, tokens


@contextlib.contextmanager
def substituted(module: Any, **replacements: Any) -> Iterator[None]:
    """Temporarily rebind module-level names (restored even on error)."""
    saved = {name: getattr(module, name) for name in replacements}
    for name, value in replacements.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


class GraftDraftWorker(EagleDraftWorker):
    """The EAGLE draft worker with Graft's tree construction (``graft`` is set by
    ``GraftWorker`` right after construction, before any CUDA-graph capture)."""

    graft: GraftState

    def draft_forward(self, forward_batch: Any) -> Any:
        with substituted(eagle_worker_v2, organize_draft_results=all_candidates):
            state = self.graft
            if (not state.checks_levels or capturing()
                    or forward_batch.forward_mode.is_idle()):
                return super().draft_forward(forward_batch)
            select = CheckpointedSelect(eagle_worker_v2.select_top_k_tokens,
                                        self.speculative_num_steps, state.policy,
                                        state.settings.stop_below)
            try:
                with substituted(eagle_worker_v2, select_top_k_tokens=select):
                    return super().draft_forward(forward_batch)
            except StopDrafting as stop:
                state.stops[stop.level] = state.stops.get(stop.level, 0) + 1
                parent_list, scores, tokens = all_candidates(
                    *select.lists, num_draft_token=self.speculative_num_draft_tokens)
                return parent_list, scores, tokens, None  # no draft probs: verify is target-only

    def draft(self, batch: Any, *, with_topology: bool = False) -> Any:
        if with_topology:  # only pipeline parallelism asks; refused at start-up
            raise NotImplementedError("GRAFT does not support pipeline parallelism")
        rids = self.graft.sync(batch.reqs)
        build = functools.partial(build_graft_verify_input, proposer=self.graft.proposer,
                                  rids=rids, broadcast=self.graft.broadcast,
                                  policy=self.graft.policy)
        # A batch that stops at level 0 needs no draft pass and no graph (an idle batch keeps
        # SGLang's path: its passes are collectives the other ranks wait for).
        graph_off = (self.cuda_graph_runner is not None and not batch.forward_mode.is_idle()
                     and self.graft.stops_at_root(batch.spec_info))
        with contextlib.ExitStack() as stack:
            stack.enter_context(substituted(eagle_worker_v2, build_eagle_verify_input=build))
            if graph_off:
                stack.enter_context(substituted(self, cuda_graph_runner=None))
            verify_input = super().draft(batch)
        self.graft.last_input = verify_input if isinstance(verify_input,
                                                           GraftVerifyInput) else None
        return verify_input


class GraftState:
    """Per-worker Graft state: the proposer and its retrieval sources, the checkpoint policy,
    request bookkeeping and the per-source acceptance counters."""

    def __init__(self, settings: GraftSettings, budget: int, vocab_size: int | None,
                 device: torch.device | str = "cpu") -> None:
        self.settings = settings
        self.policy = settings.stage_policy()
        self.retriever = (SuffixRetriever(settings.suffix_config())
                          if settings.retrieval in ("suffix", "both") else None)
        successor = None
        if settings.retrieval in ("successor", "both"):
            if vocab_size is None:
                raise ValueError("the successor table needs the target's vocabulary size")
            successor = SuccessorTable(vocab_size, settings.successor_k, device=device)
        self.proposer = GraftProposer(settings.graft_config(budget, vocab_size), self.retriever,
                                      settings.retrieval_plan(budget), successor)
        self.radix_feed = (RadixFeed(self.retriever)
                           if settings.radix_feed and self.retriever is not None else None)
        self.broadcast = _tp_broadcast() if settings.tp_broadcast else None
        self.indexed: dict[str, int] = {}  # rid -> tokens already in the retrieval index
        self.last_input: GraftVerifyInput | None = None
        self.steps = self.accepted_draft = self.accepted_grafted = 0
        self.stops: dict[int, int] = {}  # level -> eager draft loops stopped after it
        self._warned_logits = False

    @property
    def checks_levels(self) -> bool:
        """Whether the draft loop may stop early (checkpoints, or graft's threshold)."""
        return self.policy is not None or self.settings.stop_below is not None

    def stops_at_root(self, draft_input: Any) -> bool:
        """Whether every request stops at level 0, judged from the draft input's top-k
        probabilities (the level-0 candidates' confidences) before any draft pass."""
        if not self.checks_levels or getattr(draft_input, "topk_p", None) is None:
            return False
        best = draft_input.topk_p.amax(dim=1)
        _, stopped = level_stops(self.policy, self.settings.stop_below,
                                 torch.full_like(best, -1, dtype=torch.int64), 0, best)
        return bool(stopped.all())

    def sync(self, reqs: Any) -> list[str]:
        """Bring every request's retrieval state up to its committed tokens (prompt + output;
        complete in synchronous scheduling). Returns the batch's rids in order."""
        if self.retriever is None:
            return [req.rid for req in reqs]
        rids = []
        for req in reqs:
            prompt_len = len(req.origin_input_ids)
            done = self.indexed.get(req.rid)
            if done is None:
                self.retriever.start_request(
                    req.rid, [*req.origin_input_ids, *req.output_ids])
            elif prompt_len + len(req.output_ids) > done:  # only the new tokens: O(step)
                self.retriever.extend_request(req.rid, list(req.output_ids[done - prompt_len:]))
            self.indexed[req.rid] = prompt_len + len(req.output_ids)
            rids.append(req.rid)
        return rids

    def finish(self, rid: str) -> None:
        if self.indexed.pop(rid, None) is not None and self.retriever is not None:
            self.retriever.finish_request(rid)

    def observe_prefill(self, input_ids: torch.Tensor, extend_lens: list[int],
                        logits_output: Any) -> None:
        """Seed the successor table from a prefill: input_ids [sum(extend_lens)] the extended
        tokens, ``logits_output.next_token_logits`` [bs, V] the target's logits after each
        request's last one (SGLang computes no other prefill position's logits)."""
        logits = getattr(logits_output, "next_token_logits", None)
        if self.proposer.successor is None or logits is None or logits.shape[0] != len(
                extend_lens) or not extend_lens:
            return
        last = torch.tensor(list(itertools.accumulate(extend_lens)), device=input_ids.device) - 1
        self.proposer.observe_verified(input_ids[last], logits)

    def observe(self, verify_input: GraftVerifyInput | None, logits_output: Any) -> None:
        """The successor table learns from the target's logits at every verified node
        (on the device, no host read); ``logits_output``: the verify forward's
        ``LogitsProcessorOutput`` (``next_token_logits`` [bs * N, V])."""
        if self.proposer.successor is None or verify_input is None or logits_output is None:
            return
        logits = getattr(logits_output, "next_token_logits", None)
        nodes = verify_input.draft_token.shape[0]
        if logits is None:
            return
        if logits.shape[0] < nodes:  # not one row per node: nothing to learn from safely
            if not self._warned_logits:
                logger.warning("graft: verify logits have %d rows for %d tree nodes; the "
                               "successor table is not updated", logits.shape[0], nodes)
                self._warned_logits = True
            return
        # rows past the tree's are graph padding at the end of the batch
        self.proposer.observe_verified(verify_input.draft_token, logits[:nodes])

    def account(self, accept_index: torch.Tensor, accept_lens: torch.Tensor) -> None:
        """Count accepted nodes by source. accept_index [bs, S] flat node ids; accept_lens
        [bs] accepted tokens including the bonus."""
        verify_input, self.last_input = self.last_input, None
        if verify_input is None or verify_input.tree is None:
            return
        source = verify_input.tree.source.reshape(-1).tolist()
        idx, lens = accept_index.cpu(), accept_lens.cpu()
        for b in range(idx.shape[0]):
            nodes = idx[b, 1 : int(lens[b])].tolist()
            grafted = count_grafted(source, nodes)
            self.accepted_grafted += grafted
            self.accepted_draft += len(nodes) - grafted
        self.steps += 1
        if self.steps % LOG_EVERY == 0:
            logger.info("graft: %d steps, accepted draft tokens %d, grafted %d (share %.3f)",
                        self.steps, self.accepted_draft, self.accepted_grafted,
                        self.grafted_share)

    @property
    def grafted_share(self) -> float:
        total = self.accepted_draft + self.accepted_grafted
        return self.accepted_grafted / total if total else 0.0


class GraftWorker(EAGLEWorkerV2):
    """Scheduler-facing GRAFT worker (``EAGLEWorkerV2`` with a Graft draft worker)."""

    def __init__(self, server_args: Any, gpu_id: int, nccl_port: int,
                 target_worker: Any) -> None:
        # EAGLEWorkerV2 builds its draft worker by module-level name; the draft CUDA graphs are
        # captured later (Scheduler -> init_cuda_graphs), so they record GraftDraftWorker's loop.
        with substituted(eagle_worker_v2, EagleDraftWorker=GraftDraftWorker):
            super().__init__(server_args, gpu_id, nccl_port, target_worker)
        # A head directory may carry its measured thresholds (bench/calibrate.py).
        calibration = load_calibration(server_args.speculative_draft_model_path)
        settings = GraftSettings.from_env(default_threshold=calibration.threshold,
                                          default_stage_thresholds=calibration.stage_thresholds)
        vocab = getattr(target_worker.model_runner.model_config, "vocab_size", None)
        self.graft = GraftState(settings, self.speculative_num_draft_tokens, vocab, self.device)
        if self._draft_worker is not None:
            self._draft_worker.graft = self.graft
        if self.graft.radix_feed is not None:
            self.graft.radix_feed.activate()

    def forward_batch_generation(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        prefill = None
        if self.graft.proposer.successor is not None and batch.forward_mode is not None and \
                batch.forward_mode.is_extend_without_speculative() and batch.extend_lens:
            prefill = (batch.input_ids, list(batch.extend_lens))  # before the draft rotates them
        result = super().forward_batch_generation(batch, *args, **kwargs)
        if prefill is not None:
            self.graft.observe_prefill(*prefill, getattr(result, "logits_output", None))
        if getattr(result, "accept_index", None) is not None and result.accept_lens is not None:
            self.graft.observe(self.graft.last_input, getattr(result, "logits_output", None))
            self.graft.account(result.accept_index, result.accept_lens)
        return result

    def note_request_finished(self, *, rid: str, natural_stop: bool) -> None:
        """Finished or aborted: drop the request's retrieval state (its text joins the shared
        corpus)."""
        self.graft.finish(rid)
        super().note_request_finished(rid=rid, natural_stop=natural_stop)


def _tp_broadcast() -> Callable[[torch.Tensor], object] | None:
    """In-place broadcast from TP rank 0 over SGLang's TP group (None without TP)."""
    from sglang.srt.runtime_context import get_parallel

    group = get_parallel().tp_group
    if group.world_size == 1:
        return None
    return lambda tensor: group.broadcast(tensor, src=0)
