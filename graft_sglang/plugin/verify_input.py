"""From the draft loop's candidates to SGLang's verify input, through the Graft builder.

``GraftVerifyInput`` is SGLang's ``EagleVerifyInput`` with the two properties the internals
say "algorithms with other tree shapes override": a grafted chain can be deeper than the draft
loop, so the accept width is the whole tree (``max_tree_depth = N``), and the tree is irregular
(``tree_topk = -1``). Everything else (attention backends, CUDA-graph replay, greedy and
target-only sampling verify, KV compaction) treats it as an EAGLE verify input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from sglang.srt.speculative.eagle_info import EagleVerifyInput

from graft_sglang.plugin.tp import broadcast_tree
from graft_sglang.proposer import GraftProposer
from graft_sglang.stages import StagePolicy
from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.draft import DraftCandidates, eagle_candidate_parents
from graft_sglang.tree.layout import TreeMaskMode, tree_mask


@dataclass
class GraftVerifyInput(EagleVerifyInput):
    """An EAGLE verify input over a grafted tree (``tree``: the builder's output, kept for the
    per-source accounting after verification)."""

    tree: GraftTree | None = None

    @property
    def max_tree_depth(self) -> int:
        return self.draft_token_num

    @property
    def tree_topk(self) -> int:
        return -1


def drafted_levels(num_candidates: int, topk: int) -> int:
    """Levels a draft loop produced ``num_candidates`` in (``topk + (L - 1) * topk**2``)."""
    levels, rest = divmod(num_candidates - topk, topk * topk)
    if num_candidates < topk or rest:
        raise ValueError(f"{num_candidates} candidates is not a draft loop's output for topk "
                         f"{topk}")
    return levels + 1


def draft_candidates(parent_list: torch.Tensor, scores: torch.Tensor, tokens: torch.Tensor,
                     topk: int) -> DraftCandidates:
    """The draft loop's raw output -> ``DraftCandidates`` (any number of levels: a loop that
    stopped at a checkpoint has fewer).

    parent_list: [bs, 1 + (levels - 1) * topk], SGLang's ``cat(parents_list[:-1])``
        (``-1``, then the candidate indices each level expanded).
    scores / tokens: [bs, M], every candidate's cumulative confidence and token.
    """
    bs = tokens.shape[0]
    levels = drafted_levels(tokens.shape[1], topk)
    expanded = parent_list[:, 1:].reshape(bs, levels - 1, topk).to(torch.int64)
    parents = eagle_candidate_parents(topk, levels, expanded)
    return DraftCandidates(tokens.to(torch.int64), parents, scores.float())


def write_mask(mask: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Copy ``mask`` (bool / uint8) into the head of a preallocated mask buffer (any 1-byte or
    packed integer dtype: SGLang's bit-packed rows are 1/2/4-byte integers, little endian)."""
    raw = buffer.view(-1).view(torch.uint8)
    src = mask.view(-1).view(torch.uint8)
    if src.numel() > raw.numel():
        raise ValueError(f"mask of {src.numel()} bytes does not fit a {raw.numel()}-byte buffer")
    raw[: src.numel()].copy_(src)
    return buffer


def build_verify_input(
    tree: GraftTree, seq_lens: torch.Tensor, mode: TreeMaskMode | int, *, topk: int,
    num_steps: int, mask_buffer: torch.Tensor | None = None,
) -> GraftVerifyInput:
    """SGLang's verify input for ``tree`` (mask in ``mode``'s layout, written into
    ``mask_buffer`` when the backend owns one)."""
    n = tree.budget
    mask = tree_mask(tree.layout.ancestors, seq_lens, mode)
    if mask_buffer is not None:
        mask = write_mask(mask, mask_buffer)
    return GraftVerifyInput(
        draft_token=tree.tokens.reshape(-1),
        custom_mask=mask,
        positions=tree.layout.positions.reshape(-1),
        retrieve_index=tree.layout.retrieve_index,
        retrieve_next_token=tree.layout.retrieve_next_token,
        retrieve_next_sibling=tree.layout.retrieve_next_sibling,
        retrieve_cum_len=None,
        spec_steps=num_steps,
        topk=topk,
        draft_token_num=n,
        capture_hidden_mode=None,
        seq_lens_sum=None,
        seq_lens_cpu=None,
        tree=tree,
    )


def step_tree(
    proposer: GraftProposer, rids: Sequence[str], roots: torch.Tensor, seq_lens: torch.Tensor,
    parent_list: torch.Tensor, scores: torch.Tensor, tokens: torch.Tensor, topk: int,
    policy: StagePolicy | None = None,
) -> GraftTree:
    """One step's Graft trees from the draft loop's output (``all_candidates``): roots [bs],
    seq_lens [bs]; with ``policy``, each request's draft quota is its stage's split."""
    draft = draft_candidates(parent_list, scores, tokens, topk)
    quotas = None
    if policy is not None:
        quotas = policy.draft_quotas(policy.stages_from_scores(draft.scores, topk),
                                     proposer.config.budget)
    return proposer.build(rids, roots, seq_lens, draft, draft_quotas=quotas)


def build_graft_verify_input(
    batch: Any, draft_input: Any, parent_list: torch.Tensor, scores: torch.Tensor,
    tokens: torch.Tensor, draft_probs: torch.Tensor | None, *, target_worker: Any, topk: int,
    num_steps: int, num_draft_tokens: int, tree_mask_mode: TreeMaskMode | int, device: str,
    proposer: GraftProposer, rids: Sequence[str],
    broadcast: Callable[[torch.Tensor], object] | None = None,
    policy: StagePolicy | None = None,
) -> EagleVerifyInput:
    """Drop-in for SGLang's ``build_eagle_verify_input`` (same positional arguments), with the
    draft loop's (parent_list, scores, tokens) in place of (parent_list, top_scores_index,
    draft_tokens). ``broadcast`` (TP safety switch) replaces the tree by TP rank 0's;
    ``policy``: graft-paper's checkpoints, which set each request's draft quota."""
    if batch.forward_mode.is_idle():
        return EagleVerifyInput.create_idle_input(topk, num_steps, num_draft_tokens, device)
    tree = step_tree(proposer, rids, draft_input.bonus_tokens, batch.seq_lens, parent_list,
                     scores, tokens, topk, policy)
    if broadcast is not None:
        tree = broadcast_tree(tree, broadcast)
    verify_mask = target_worker.model_runner.attn_backend.verify_mask
    mode = tree_mask_mode if verify_mask is None else verify_mask.mode
    buffer = verify_mask.buffer if verify_mask is not None and verify_mask.fits(
        tree.batch_size) else None
    return build_verify_input(tree, batch.seq_lens, mode, topk=topk, num_steps=num_steps,
                              mask_buffer=buffer)
