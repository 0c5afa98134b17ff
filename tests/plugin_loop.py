"""The SGLang worker's per-step pieces driven around a greedy tree verify, on CPU.

Request sync, the draft loop's output (``all_candidates`` of SGLang-layout draft lists), the
worker's own entry point for the step (``build_graft_verify_input``: stage split, suffix and
successor candidates, build, mask), verification with SGLang's kernel semantics
(``graft_sglang.verify``), the successor update from the verify logits and the per-source
accounting: what ``GraftWorker`` does per step, with a deterministic target standing in for the
verify forward.
"""

from __future__ import annotations

import dataclasses
import types
from array import array
from collections.abc import Callable

import torch
from sglang.srt.managers.schedule_batch import Req
from sglang.srt.sampling.sampling_params import SamplingParams

from graft_sglang.plugin.verify_input import build_graft_verify_input
from graft_sglang.plugin.worker import GraftState, all_candidates
from graft_sglang.tree.layout import TreeMaskMode, tree_mask
from graft_sglang.verify import verify_tree_greedy
from tests.random_inputs import eagle_loop_lists


def greedy_reference(next_token: Callable[[list[int]], int], prompt: list[int],
                     new_tokens: int) -> list[int]:
    seq = list(prompt)
    while len(seq) < len(prompt) + new_tokens:
        seq.append(next_token(seq))
    return seq[len(prompt):]


def run_worker_steps(
    state: GraftState, next_token: Callable[[list[int]], int], prompts: list[list[int]],
    new_tokens: int, vocab: int, topk: int, steps: int, gen: torch.Generator,
    vary_levels: bool = False,
) -> list[list[int]]:
    """Decode ``prompts`` with random draft loops (``vary_levels``: loops that stopped after a
    random level, as checkpoints leave them); returns each request's output tokens."""
    n = state.step.budget
    backend = types.SimpleNamespace(model_runner=types.SimpleNamespace(
        attn_backend=types.SimpleNamespace(verify_mask=None)))  # no preallocated mask
    reqs = [Req(f"r{i}", "", array("q", p), SamplingParams()) for i, p in enumerate(prompts)]
    for req in reqs:  # prefill produced the first token
        req.output_ids.append(next_token(list(req.origin_input_ids)))
    while min(len(r.output_ids) for r in reqs) < new_tokens:
        rids = state.sync(reqs)
        contexts = [[*r.origin_input_ids, *r.output_ids] for r in reqs]
        levels = int(torch.randint(1, steps + 1, (1,), generator=gen)) if vary_levels else steps
        lists = eagle_loop_lists(gen, len(reqs), topk, levels, vocab)
        roots = torch.tensor([c[-1] for c in contexts])
        seq_lens = torch.tensor([len(c) - 1 for c in contexts])
        batch = types.SimpleNamespace(forward_mode=types.SimpleNamespace(is_idle=lambda: False),
                                      seq_lens=seq_lens)
        vi = build_graft_verify_input(
            batch, types.SimpleNamespace(bonus_tokens=roots), *all_candidates(*lists, n), None,
            target_worker=backend, topk=topk, num_steps=steps, num_draft_tokens=n,
            tree_mask_mode=TreeMaskMode.QLEN_ONLY, device="cpu", step=state.step, rids=rids)
        tree = vi.tree
        assert torch.equal(vi.custom_mask, tree_mask(tree.layout.ancestors, seq_lens,
                                                     TreeMaskMode.QLEN_ONLY))
        state.last_input = vi
        predict = torch.empty(len(reqs), n, dtype=torch.int64)
        for b, context in enumerate(contexts):
            for node in range(n):
                path = [int(tree.tokens[b, i]) for i in range(1, node + 1)
                        if tree.layout.ancestors[b, node, i]]
                predict[b, node] = next_token(context + path)
        layout = dataclasses.replace(tree.layout, retrieve_index=vi.retrieve_index,
                                     retrieve_next_token=vi.retrieve_next_token,
                                     retrieve_next_sibling=vi.retrieve_next_sibling)
        result = verify_tree_greedy(vi.draft_token.view(len(reqs), n), layout, predict,
                                    vi.max_tree_depth)
        for b, req in enumerate(reqs):
            req.output_ids.extend(result.accepted_tokens(b))
        # the verify forward's logits: the deterministic target's choice, confidently
        logits = torch.nn.functional.one_hot(predict.view(-1), vocab).float() * 8.0
        state.observe(vi, types.SimpleNamespace(next_token_logits=logits))
        state.account(result.accept_index, result.accept_length + 1)
    return [list(r.output_ids[:new_tokens]) for r in reqs]
