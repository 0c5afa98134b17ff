"""Keep the retrieval source's per-request text equal to what SGLang has committed, under the
synchronous and the overlap schedule alike.

What a draft may read from ``batch.reqs`` (SGLang 0.5.23, ``Scheduler.event_loop_overlap``):
the overlap loop launches forward ``k`` before it processes the result of forward ``k - 1``, so
at draft ``k`` a request's ``output_ids`` lack the tokens of forward ``k - 1`` (the one result
in flight), ``req.finished()`` is still false for a request that forward ``k - 1`` finished,
and a request whose prefill was forward ``k - 1`` has no output token yet. The synchronous loop
(and the overlap loop's "process first" iterations) processed every earlier result first.

``RequestSync`` tells the two apart per request, with no flag: ``record`` remembers, after
every forward, which rows it produced and the committed length each row's tokens follow; at the
next ``sync`` a request whose committed length (prompt + ``output_ids``) still equals that
length has its row unprocessed, and the row's tokens are taken from the forward's own result
(``next_token_ids`` / ``accept_lens``, host copies once the scheduler's ``copy_done`` fired: no
device read of its own). A synchronous run never finds an unprocessed row, so it never reads a
result: it is the special case.

A row that finishes its request is cut where the scheduler will cut it
(``Req.update_finish_state``'s stop-token and ``max_new_tokens`` rules, or a pending abort); the
request is then treated as gone (``DEAD_ROW``) and ``finish`` adds its committed text through
the stop, so a finished request's text is its committed text in both schedules, and a request
that finishes in its prefill is never tracked, as in the synchronous schedule. Stop strings /
regexes cannot be predicted without detokenizing: under overlap such a request's last round
is indexed, and tokens past the stop may reach the shared corpus with its text.

Requests that leave the decode batch: ``finish`` (SGLang's ``note_request_finished``) hands
the request's committed text to the source (``finish_request``). Requests that leave without
it (finished at prefill, finished under overlap after leaving the batch, retracted) are found
at the next ``sync`` from the ``Req`` last seen: finished or retracted ones are finished there
(a retracted one starts again from its committed text when it returns), others are checked
again at every ``sync``. A row whose request finished before the draft (the batch was formed
before its result was processed) or finishes with the row in flight gets ``DEAD_ROW``, a
request with no text: it retrieves nothing from its own text and no state is recreated.

Cost per ``sync``: O(batch + new tokens + requests that left); ``record`` O(batch); a round's
tokens are read from its result once, O(batch * stride).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graft_sglang.plugin.radix_feed import vocabulary_tokens
from graft_sglang.retrieval.base import RetrievalSource

DEAD_ROW = "\x00graft:dead-row"
"""The rid given to a row whose request is finished or finishes with its tokens in flight
(started once, with no text)."""


@dataclass
class _Tracked:
    """A request the source holds: the ``Req`` last seen in a batch, its prompt length and
    how many tokens (prompt + output) the source holds for it."""

    req: Any
    prompt_len: int
    indexed: int


@dataclass(frozen=True)
class _Round:
    """One forward: rid -> (row in the result, committed length the row's tokens follow)."""

    rows: dict[str, tuple[int, int]]
    result: Any


def stop_tokens(req: Any) -> set[int]:
    """The token ids that finish ``req`` (``Req._check_token_based_finish``'s set); empty with
    ``ignore_eos``."""
    params = req.sampling_params
    if params.ignore_eos:
        return set()
    stops = set(params.stop_token_ids or ()) | set(req.eos_token_ids or ())
    tokenizer = req.tokenizer
    if tokenizer is not None:
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        stops |= set(tokenizer.additional_stop_token_ids or ())
    return stops


def committed_run(req: Any, run: Sequence[int], output_len: int) -> tuple[list[int], bool]:
    """What SGLang commits of ``run`` (tokens a forward produced for ``req``, following
    ``output_len`` output tokens) and whether that finishes ``req``: cut after the first stop
    token and at ``max_new_tokens``; a pending abort (``to_finish``) finishes it too.
    O(len(run))."""
    stops = stop_tokens(req)
    out, finishes = list(run), req.to_finish is not None
    for i, token in enumerate(out):
        if token in stops:
            out, finishes = out[: i + 1], True
            break
    room = req.sampling_params.max_new_tokens - output_len
    if len(out) >= room:
        out, finishes = out[: max(0, room)], True
    return out, finishes


def round_rows(result: Any) -> list[list[int]]:
    """Each row's tokens of a forward's ``GenerationBatchResult``: a decode (``accept_lens``
    set) gives ``next_token_ids[b * stride : b * stride + accept_lens[b]]``, a prefill one
    token per row. Waits for the scheduler's device-to-host copy (``copy_done``) first; a
    result still on the device is copied here. A result with no sampled tokens gives none."""
    done = getattr(result, "copy_done", None)
    if done is not None:
        done.synchronize()
    ids = result.next_token_ids
    if not isinstance(ids, torch.Tensor):
        return []
    ids = ids.cpu().tolist()
    lens = result.accept_lens
    if lens is None:
        return [[token] for token in ids]
    stride = result.speculative_output_stride or result.speculative_num_draft_tokens
    return [ids[b * stride : b * stride + n] for b, n in enumerate(lens.cpu().tolist())]


class RequestSync:
    """Brings ``source``'s per-request state up to each request's committed tokens before a
    draft (see the module docstring). ``source`` None: nothing is tracked, ``sync`` returns
    the rids.

    A request's text is its ``origin_input_ids_unpadded`` (the padded ids hold multimodal pad
    values) and its output, without the values outside ``[0, vocab_size)``; lengths count
    positions (prompt + output), as SGLang's."""

    def __init__(self, source: RetrievalSource | None, vocab_size: int | None = None) -> None:
        self.source = source
        self.vocab_size = vocab_size
        self.tracked: dict[str, _Tracked] = {}
        self._round: _Round | None = None
        self._round_tokens: list[list[int]] | None = None
        self._synced: set[str] = set()  # rids synced for the forward being run
        self._dead_row_started = False

    def indexed(self, rid: str) -> int | None:
        """Tokens (prompt + output) the source holds for ``rid``; None if it holds none."""
        tracked = self.tracked.get(rid)
        return None if tracked is None else tracked.indexed

    def sync(self, reqs: Sequence[Any]) -> list[str]:
        """Before a decode batch's draft: every live request of ``reqs`` (SGLang ``Req``s)
        gets its committed tokens, including those of the forward still in flight; requests
        that left the batch are finished (above). Returns one rid per row (``DEAD_ROW`` for
        a request finished, or finishing with its tokens in flight). Raises what ``source``
        raises."""
        if self.source is None:
            return [req.rid for req in reqs]
        present = {req.rid for req in reqs}
        for rid in [rid for rid in self.tracked if rid not in present]:
            req = self.tracked[rid].req
            if req.finished() or req.is_retracted:
                self._finalize(rid)
        rids = []
        for req in reqs:
            if req.finished():  # in the batch for one more round; its output is final
                if req.rid in self.tracked:
                    self._finalize(req.rid)
                rids.append(self._dead_row())
                continue
            pending, finishes = self._pending(req)
            if finishes:  # its last tokens are in flight; ``finish`` / the next sync add them
                rids.append(self._dead_row())
                continue
            self._bring_up(req, pending)
            self._synced.add(req.rid)
            rids.append(req.rid)
        return rids

    def record(self, reqs: Sequence[Any], result: Any) -> None:
        """After every forward (prefill or decode) of ``reqs``: remember its rows and
        ``result`` (the ``GenerationBatchResult`` handed to the scheduler) until the next
        forward. O(len(reqs)); reads nothing from the device."""
        if self.source is None:
            return
        rows = {}
        for b, req in enumerate(reqs):
            tracked = self.tracked.get(req.rid)
            if req.rid in self._synced and tracked is not None:
                rows[req.rid] = (b, tracked.indexed)
            else:  # a prefill row: nothing of it in flight before this forward
                rows[req.rid] = (b, len(req.origin_input_ids_unpadded) + len(req.output_ids))
        self._round, self._round_tokens = _Round(rows, result), None
        self._synced = set()

    def finish(self, rid: str) -> None:
        """The request finished or was aborted (SGLang's ``note_request_finished``): its
        committed text through the stop goes to the source. A no-op for an unknown rid."""
        if self.source is not None and rid in self.tracked:
            self._finalize(rid)

    def _bring_up(self, req: Any, pending: list[int]) -> None:
        prompt, output = req.origin_input_ids_unpadded, req.output_ids
        target = len(prompt) + len(output) + len(pending)
        tracked = self.tracked.get(req.rid)
        if tracked is None or tracked.prompt_len != len(prompt) or tracked.indexed > target:
            if tracked is not None:  # no longer a prefix of the committed text: start over
                self.source.finish_request(req.rid)
            # the tenant is the request's radix-cache namespace: its own shared corpus only
            self.source.start_request(req.rid, self._tokens([*prompt, *output, *pending]),
                                      tenant=(req.extra_key, req.cache_salt))
            self.tracked[req.rid] = _Tracked(req, len(prompt), target)
            return
        if tracked.indexed < target:
            self.source.extend_request(
                req.rid, self._tokens([*output[tracked.indexed - len(prompt) :], *pending]))
        tracked.req, tracked.indexed = req, target

    def _tokens(self, tokens: Sequence[int]) -> list[int]:
        return list(vocabulary_tokens(tokens, self.vocab_size))

    def _pending(self, req: Any) -> tuple[list[int], bool]:
        """The committed part of the last forward's row for ``req`` if the scheduler has not
        processed it yet (the request's committed length did not move), and whether it
        finishes the request; ([], False) when nothing is in flight."""
        committed = len(req.origin_input_ids_unpadded) + len(req.output_ids)
        row = None if self._round is None else self._round.rows.get(req.rid)
        if row is None or row[1] != committed:
            return [], False
        if self._round_tokens is None:
            self._round_tokens = round_rows(self._round.result)
        tokens = self._round_tokens
        run = tokens[row[0]] if row[0] < len(tokens) else []
        return committed_run(req, run, len(req.output_ids))

    def _finalize(self, rid: str) -> None:
        tracked = self.tracked.pop(rid)
        req = tracked.req
        committed = tracked.prompt_len + len(req.output_ids_through_stop)
        if tracked.indexed < committed:
            self.source.extend_request(rid, self._tokens(
                req.output_ids_through_stop[tracked.indexed - tracked.prompt_len :]))
        self.source.finish_request(rid)

    def _dead_row(self) -> str:
        if not self._dead_row_started:
            self.source.start_request(DEAD_ROW, [])
            self._dead_row_started = True
        return DEAD_ROW
