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

These rebindings and overrides are checked against SGLang's own signatures when a GRAFT server
starts (``check_substitution_targets``), so an SGLang that changed them fails at start-up rather
than mid-request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from sglang.srt.speculative import eagle_worker_v2
from sglang.srt.speculative.adaptive_runtime_state import SpecRuntimeState
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.eagle_worker_v2 import EagleDraftWorker, EAGLEWorkerV2

from graft_sglang.cost.decision import DraftPlan
from graft_sglang.plugin.accept_counter import AcceptCounter
from graft_sglang.plugin.algo import check_attention_backends
from graft_sglang.plugin.checkpoints import CheckpointedSelect, StopDrafting, capturing
from graft_sglang.plugin.radix_feed import RadixFeed
from graft_sglang.plugin.registration import TESTED_SGLANG
from graft_sglang.plugin.request_sync import RequestSync
from graft_sglang.plugin.settings import GraftSettings, server_settings
from graft_sglang.plugin.tp import Broadcast, agree_settings, broadcast_flag
from graft_sglang.plugin.verify_input import (
    GraftVerifyInput,
    SetWidth,
    build_graft_verify_input,
    plain_verify_input,
)
from graft_sglang.retrieval.native import suffix_retriever
from graft_sglang.step import GraftStep
from graft_sglang.tree.retrieved import RetrievedCandidates

logger = logging.getLogger(__name__)


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
            if ((not state.rule.active and state.planned_levels is None) or capturing()
                    or forward_batch.forward_mode.is_idle()):
                return super().draft_forward(forward_batch)
            select = CheckpointedSelect(eagle_worker_v2.select_top_k_tokens,
                                        self.speculative_num_steps, state.rule,
                                        state.all_stopped, levels=state.planned_levels)
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
        state = self.graft
        rids = state.sync(batch.reqs)
        plan, root = state.plan(rids, batch, self.speculative_num_steps)
        state.planned_levels = None if plan is None else max(1, plan.levels)
        if plan is not None and plan.levels == 0 and plan.size == 1:
            state.plain_steps += 1
            state.last_input = plain_verify_input(
                batch, batch.spec_info, target_worker=self.target_worker, topk=self.topk,
                num_steps=self.speculative_num_steps, tree_mask_mode=self.tree_mask_mode,
                set_width=state.set_width)
            return state.last_input
        build = functools.partial(build_graft_verify_input, step=state.step, rids=rids,
                                  broadcast=state.broadcast, root=root,
                                  set_width=state.set_width)
        # A batch that stops at level 0 needs no draft pass and no graph (an idle batch keeps
        # SGLang's path: its passes are collectives the other ranks wait for).
        graph_off = (self.cuda_graph_runner is not None and not batch.forward_mode.is_idle()
                     and self.graft.stops_at_root(batch.spec_info))
        with contextlib.ExitStack() as stack:
            stack.enter_context(substituted(eagle_worker_v2, build_eagle_verify_input=build))
            if graph_off:
                stack.enter_context(substituted(self, cuda_graph_runner=None))
            verify_input = super().draft(batch)
        state.last_input = verify_input if isinstance(verify_input, GraftVerifyInput) else None
        return verify_input


class GraftState:
    """Per-worker Graft state: the mode's recipe and its step (retrieval sources included),
    request bookkeeping and the per-source acceptance counters.

    vocab_size: the target's vocabulary; token values outside it (multimodal pad values) never
        enter the retrieval index, so no tree holds one (None: no filter).
    broadcast:  the TP broadcast switch (``plugin/tp.py``): rank 0's trees and stop-drafting
        decisions on every rank (None: each rank decides from its own, identical, inputs).
    radix_cache: whether the server keeps a radix cache (``--disable-radix-cache``: no feed,
        finished requests' text reaches the shared corpus directly).
    set_width:  switches the worker's verify width (``GraftWorker`` sets it when the settings
        give step costs); None: every step verifies the whole tree.
    """

    def __init__(self, settings: GraftSettings, budget: int, vocab_size: int | None,
                 device: torch.device | str = "cpu", broadcast: Broadcast | None = None,
                 radix_cache: bool = True) -> None:
        self.settings = settings
        self.vocab_size = vocab_size
        self.recipe = settings.recipe(budget, vocab_size)
        self.rule = self.recipe.stop
        self.retriever = (suffix_retriever(settings.suffix_config())
                          if self.recipe.uses_suffix else None)
        # No per-step value checks in a server: each would be a host read.
        self.step = GraftStep.for_recipe(self.recipe, self.retriever, vocab_size=vocab_size,
                                         device=device, check_inputs=False,
                                         cost=settings.cost_model())
        self.set_width: SetWidth | None = None
        self.planned_levels: int | None = None  # the current step's planned draft depth
        self.plain_steps = 0  # steps the cost-aware plan made plain (no draft, the root alone)
        self.widths: dict[int, int] = {}  # verify width -> cost-aware steps verified at it
        feed = settings.radix_feed and radix_cache and self.retriever is not None
        self.radix_feed = RadixFeed(self.retriever, vocab_size=vocab_size) if feed else None
        self.broadcast = broadcast
        self.requests = RequestSync(self.retriever, vocab_size)
        self.last_input: GraftVerifyInput | None = None
        self.accepts = AcceptCounter(device)
        self.stops: dict[int, int] = {}  # level -> eager draft loops stopped after it
        self._warned_logits = False

    def all_stopped(self, stopped: torch.Tensor) -> bool:
        """Whether the draft loop stops: stopped [bs] bool, the requests that need no deeper
        level. One host read; with ``broadcast``, rank 0's answer on every rank."""
        flag = stopped.all()
        return bool(flag) if self.broadcast is None else broadcast_flag(flag, self.broadcast)

    def stops_at_root(self, draft_input: Any) -> bool:
        """Whether every request stops at level 0, judged from the draft input's top-k
        probabilities (the level-0 candidates' confidences) before any draft pass."""
        if not self.rule.active or getattr(draft_input, "topk_p", None) is None:
            return False
        best = draft_input.topk_p.amax(dim=1)
        _, stopped = self.rule.after_level(torch.full_like(best, -1, dtype=torch.int64), 0,
                                           best)
        return self.all_stopped(stopped)

    def counted(self, set_width: SetWidth) -> SetWidth:
        """``set_width`` that also counts the steps verified at each width (``widths``)."""
        def counting(n: int) -> None:
            self.widths[n] = self.widths.get(n, 0) + 1
            set_width(n)
        return counting

    def plan(self, rids: list[str], batch: Any, num_steps: int
             ) -> tuple[DraftPlan | None, RetrievedCandidates | None]:
        """The cost-aware draft plan of this step (``GraftStep.plan`` from the draft input's
        level-0 confidences and the tries retrieved at the root) and those tries, or (None,
        None) where the step is not cost-aware. With ``broadcast``, rank 0's plan (its levels
        and size, one small broadcast); without, every rank plans from identical inputs."""
        draft_input = batch.spec_info
        topk_p = getattr(draft_input, "topk_p", None)
        if (self.set_width is None or self.step.cost is None or topk_p is None
                or batch.forward_mode.is_idle()):
            return None, None
        root = self.step.retrieve_root(rids, draft_input.bonus_tokens)
        plan = self.step.plan(topk_p, root, num_steps, level0_passes=0)
        if plan is not None and self.broadcast is not None:
            agreed = torch.tensor([plan.levels, plan.size], device=topk_p.device)
            self.broadcast(agreed)
            levels, size = agreed.tolist()
            plan = dataclasses.replace(plan, levels=levels, size=size)
        return plan, root

    def sync(self, reqs: Any) -> list[str]:
        """Before a draft: every request's retrieval state holds its committed tokens, also
        those of a forward the overlap schedule has not processed yet (``RequestSync``).
        Returns one rid per row of the batch."""
        return self.requests.sync(reqs)

    def finish(self, rid: str) -> None:
        self.requests.finish(rid)

    def observe_prefill(self, input_ids: torch.Tensor, extend_lens: list[int],
                        logits_output: Any) -> None:
        """Seed the successor table from a prefill: input_ids [sum(extend_lens)] the extended
        tokens, ``logits_output.next_token_logits`` [bs, V] the target's logits after each
        request's last one (SGLang computes no other prefill position's logits)."""
        logits = getattr(logits_output, "next_token_logits", None)
        if self.step.successor is None or logits is None or logits.shape[0] != len(
                extend_lens) or not extend_lens:
            return
        last = torch.tensor(list(itertools.accumulate(extend_lens)), device=input_ids.device) - 1
        self.step.observe_verified(input_ids[last], logits)

    def observe(self, verify_input: GraftVerifyInput | None, logits_output: Any) -> None:
        """The successor table learns from the target's logits at every verified node
        (on the device, no host read); ``logits_output``: the verify forward's
        ``LogitsProcessorOutput`` (``next_token_logits`` [bs * N, V])."""
        if self.step.successor is None or verify_input is None or logits_output is None:
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
        self.step.observe_verified(verify_input.draft_token, logits[:nodes])

    def account(self, accept_index: torch.Tensor, accept_lens: torch.Tensor) -> None:
        """Count the verified step's accepted nodes by source, on the device (no host read):
        accept_index [bs, S] flat node ids, accept_lens [bs] accepted tokens including the
        bonus. Every ``log_interval`` steps one log line (the one host read then)."""
        verify_input, self.last_input = self.last_input, None
        if verify_input is None or verify_input.tree is None:
            return
        self.accepts.add(verify_input.tree.source, accept_index, accept_lens)
        if self.steps % self.settings.log_interval == 0:
            draft, grafted = self.accepts.totals()
            logger.info("graft: %d steps, accepted draft tokens %d, grafted %d (share %.3f)",
                        self.steps, draft, grafted, grafted / max(1, draft + grafted))

    @property
    def steps(self) -> int:
        """Verified steps counted."""
        return self.accepts.steps

    @property
    def accepted_draft(self) -> int:
        """Accepted tokens (bonus excluded) the draft proposed (one host read)."""
        return self.accepts.totals()[0]

    @property
    def accepted_grafted(self) -> int:
        """Accepted tokens only retrieval proposed (one host read)."""
        return self.accepts.totals()[1]

    @property
    def grafted_share(self) -> float:
        draft, grafted = self.accepts.totals()
        return grafted / (draft + grafted) if draft + grafted else 0.0


class GraftWorker(EAGLEWorkerV2):
    """Scheduler-facing GRAFT worker (``EAGLEWorkerV2`` with a Graft draft worker)."""

    def __init__(self, server_args: Any, gpu_id: int, nccl_port: int,
                 target_worker: Any) -> None:
        # EAGLEWorkerV2 builds its draft worker by module-level name; the draft CUDA graphs are
        # captured later (Scheduler -> init_cuda_graphs), so they record GraftDraftWorker's loop.
        from sglang.srt.runtime_context import get_parallel, get_spec

        check_substitution_targets()  # this rank's SGLang (another node may run another)
        with substituted(eagle_worker_v2, EagleDraftWorker=GraftDraftWorker):
            super().__init__(server_args, gpu_id, nccl_port, target_worker)
        settings = server_settings(get_spec().speculative_draft_model_path)
        group = get_parallel().tp_group
        agree_settings(settings, group)
        broadcast = (functools.partial(group.broadcast, src=0)
                     if settings.tp_broadcast and group.world_size > 1 else None)
        vocab = getattr(target_worker.model_runner.model_config, "vocab_size", None)
        self._widths: dict[int, SpecRuntimeState] = {}
        self.graft = GraftState(settings, self.speculative_num_draft_tokens, vocab, self.device,
                                broadcast, radix_cache=not server_args.disable_radix_cache)
        if self.graft.step.cost is not None:
            self.graft.set_width = self.graft.counted(self.set_verify_width)
        if self._draft_worker is not None:
            self._draft_worker.graft = self.graft
        if self.graft.radix_feed is not None:
            self.graft.radix_feed.activate()

    def init_cuda_graphs(self) -> None:
        """SGLang's, then (cost-aware) one runtime state per verify width, built by SGLang's
        adaptive-speculation protocol (``build_adaptive_runtime_state``: the target's and the
        draft extend's attention backends sized for that width). Cost-aware widths next to
        captured graphs are refused (ValueError naming the setting and the flag): per-width
        graphs are not tested yet."""
        super().init_cuda_graphs()
        if self.graft.set_width is None:
            return
        graphs = (getattr(self._target_worker.model_runner, "decode_cuda_graph_runner", None),
                  getattr(self._draft_worker, "cuda_graph_runner", None))
        if any(g is not None for g in graphs):
            raise ValueError("SGLANG_GRAFT_COST_TABLE (cost-aware verify widths) needs "
                             "--disable-cuda-graph: verify graphs of every width are not "
                             "captured yet; unset SGLANG_GRAFT_COST_TABLE to keep the graphs")
        full = self.speculative_num_draft_tokens
        self._widths = {full: self._current_width_state()}
        for n in self.graft.recipe.cost.sizes(full):
            if n != full:
                self._widths[n] = self.build_adaptive_runtime_state(self.speculative_num_steps, n)

    def _current_width_state(self) -> SpecRuntimeState:
        dw = self._draft_worker
        return SpecRuntimeState(
            speculative_num_steps=self.speculative_num_steps,
            speculative_num_draft_tokens=self.speculative_num_draft_tokens,
            draft_attn_backend=dw.draft_attn_backend, cuda_graph_runner=dw.cuda_graph_runner,
            target_attn_backend=self._target_worker.model_runner.attn_backend,
            target_graph_runner=self._target_worker.model_runner.decode_cuda_graph_runner,
            draft_extend_attn_backend=dw.draft_extend_attn_backend,
            cuda_graph_runner_for_draft_extend=dw.cuda_graph_runner_for_draft_extend)

    def set_verify_width(self, n: int) -> None:
        """Verify (and draft-extend) ``n`` nodes per request from now on: the width's runtime
        state (what SGLang's ``apply_runtime_state`` switches for the verify and the draft
        extend; the draft loop's own state does not depend on the width, and the loop of this
        step has run). The KV pool was sized for the largest width, N."""
        if n == self.speculative_num_draft_tokens:
            return
        state = self._widths[n]
        dw = self._draft_worker
        self.speculative_num_draft_tokens = dw.speculative_num_draft_tokens = n
        dw.draft_extend_attn_backend = state.draft_extend_attn_backend
        if state.draft_extend_attn_backend is not None:
            dw.draft_runner.attn_backend = state.draft_extend_attn_backend
        dw.cuda_graph_runner_for_draft_extend = state.cuda_graph_runner_for_draft_extend
        runner = self._target_worker.model_runner
        runner.attn_backend = state.target_attn_backend
        runner.decode_cuda_graph_runner = state.target_graph_runner

    def init_attention_backends(self) -> None:
        """SGLang's, then the check of the target's resolved attention backend (which SGLang
        may have picked itself): it must verify a tree, i.e. read the verify mask. Raises
        ValueError naming the flag otherwise."""
        super().init_attention_backends()
        runner = self.target_worker.model_runner
        check_attention_backends((getattr(runner, "prefill_attention_backend_str", None),
                                  getattr(runner, "decode_attention_backend_str", None)),
                                 self.page_size)
        mask = runner.attn_backend.verify_mask
        if mask is not None and not mask.is_read:
            raise ValueError(f"the target's attention backend "
                             f"({type(runner.attn_backend).__name__}) does not read the verify "
                             f"tree mask, so it verifies chains only; GRAFT needs a tree "
                             f"backend: --attention-backend flashinfer, fa3 or triton")

    def forward_batch_generation(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        prefill = None
        if self.graft.step.successor is not None and batch.forward_mode is not None and \
                batch.forward_mode.is_extend_without_speculative() and batch.extend_lens:
            prefill = (batch.input_ids, list(batch.extend_lens))  # before the draft rotates them
        result = super().forward_batch_generation(batch, *args, **kwargs)
        self.graft.requests.record(batch.reqs, result)  # every forward: its rows may be in flight
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


def signature_mismatch(theirs: Callable, ours: Callable,
                       bound: Sequence[str] = ()) -> str | None:
    """Why ``ours`` cannot stand in for SGLang's ``theirs`` (None: it can). Positional
    parameters are compared by count (SGLang passes them positionally), keyword-only ones by
    name; ``bound``: our extra keyword-only parameters that are bound before the call."""
    p = inspect.Parameter
    a = list(inspect.signature(theirs).parameters.values())
    b = list(inspect.signature(ours).parameters.values())
    positional = (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    their_pos = [x for x in a if x.kind in positional]
    our_pos = [x for x in b if x.kind in positional]
    our_names = {x.name for x in b if x.kind != p.VAR_POSITIONAL}
    our_var_pos = any(x.kind == p.VAR_POSITIONAL for x in b)
    our_var_kw = any(x.kind == p.VAR_KEYWORD for x in b)
    if len(our_pos) < len(their_pos) and not our_var_pos:
        return f"{len(their_pos)} positional parameters, ours take {len(our_pos)}"
    if any(x.default is p.empty for x in our_pos[len(their_pos):]):
        return f"{len(their_pos)} positional parameters, ours need {len(our_pos)}"
    missing = [x.name for x in a if x.kind == p.KEYWORD_ONLY and x.name not in our_names]
    if missing and not our_var_kw:
        return f"keyword parameter(s) {missing} that ours lack"
    their_kw = {x.name for x in a if x.kind == p.KEYWORD_ONLY}
    extra = [x.name for x in b if x.kind == p.KEYWORD_ONLY and x.default is p.empty
             and x.name not in their_kw and x.name not in bound]
    if extra:
        return f"no keyword parameter(s) {extra} that ours need"
    return None


def _callers() -> tuple[tuple[Callable, str], ...]:
    """(SGLang function, what it must call by that name) for each rebinding: module-level
    names, the draft worker's graph runner attribute, its overridden ``draft_forward``."""
    return ((EagleDraftWorker.draft_forward, "organize_draft_results"),
            (EagleDraftWorker.draft_forward, "select_top_k_tokens"),
            (EagleDraftWorker.draft, "build_eagle_verify_input"),
            (EagleDraftWorker.draft, "self.cuda_graph_runner.execute"),
            (EagleDraftWorker.draft, "self.draft_forward"),
            (EAGLEWorkerV2.__init__, "EagleDraftWorker"))


def _stand_ins() -> tuple[tuple[str, Callable, Callable, tuple[str, ...]], ...]:
    """(name, SGLang's, ours, our bound keyword parameters) for each rebinding and override."""
    return (
        ("eagle_worker_v2.organize_draft_results", eagle_worker_v2.organize_draft_results,
         all_candidates, ()),
        ("eagle_worker_v2.build_eagle_verify_input", eagle_worker_v2.build_eagle_verify_input,
         build_graft_verify_input, ("step", "rids", "broadcast")),
        ("eagle_worker_v2.select_top_k_tokens", eagle_worker_v2.select_top_k_tokens,
         functools.partial(CheckpointedSelect.__call__, None), ()),  # bound to its instance
        ("EagleDraftWorker.draft_forward", EagleDraftWorker.draft_forward,
         GraftDraftWorker.draft_forward, ()),
        ("EagleDraftWorker.draft", EagleDraftWorker.draft, GraftDraftWorker.draft, ()),
        ("EAGLEWorkerV2.__init__", EAGLEWorkerV2.__init__, GraftWorker.__init__, ()),
        ("EAGLEWorkerV2.forward_batch_generation", EAGLEWorkerV2.forward_batch_generation,
         GraftWorker.forward_batch_generation, ()),
        ("EAGLEWorkerV2.note_request_finished", EAGLEWorkerV2.note_request_finished,
         GraftWorker.note_request_finished, ()),
        ("BaseSpecWorker.init_attention_backends", BaseSpecWorker.init_attention_backends,
         GraftWorker.init_attention_backends, ()),
    )


def substitution_problems() -> list[str]:
    """Where this SGLang no longer matches what this module rebinds and overrides (empty for
    SGLang 0.5.23): a caller that stopped calling a rebound name, or a signature ours does not
    fit. Cost: reads the source of three SGLang functions."""
    problems = []
    for caller, name in _callers():
        try:
            calls = f"{name}(" in inspect.getsource(caller)
        except (OSError, TypeError) as err:
            problems.append(f"cannot read {caller.__qualname__}'s source ({err})")
            continue
        if not calls:
            problems.append(f"{caller.__qualname__} no longer calls {name}()")
    for name, theirs, ours, bound in _stand_ins():
        why = signature_mismatch(theirs, ours, bound)
        if why is not None:
            problems.append(f"{name} takes {why}")
    return problems


def check_substitution_targets() -> None:
    """Refuse to start GRAFT on an SGLang whose rebound functions or overridden methods changed
    (RuntimeError naming them and both SGLang versions)."""
    problems = substitution_problems()
    if problems:
        import sglang

        raise RuntimeError(
            f"GRAFT plugs into SGLang {TESTED_SGLANG}; this SGLang "
            f"({getattr(sglang, '__version__', 'unknown')}) differs where it plugs in: "
            + "; ".join(problems))
