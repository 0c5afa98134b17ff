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
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree
from graft_sglang.tree.draft import DraftCandidates, eagle_candidate_parents
from graft_sglang.tree.layout import TreeMaskMode, tree_mask
from graft_sglang.tree.retrieved import RetrievedCandidates
from graft_sglang.tree.subtree import root_only

SetWidth = Callable[[int], None]
"""Switches the worker to verify ``n`` nodes per request (verify and draft extend) before a
verify input of that width is used."""


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
    num_steps: int, mask_buffer: torch.Tensor | None = None, mask: torch.Tensor | None = None,
) -> GraftVerifyInput:
    """SGLang's verify input for ``tree``: its mask in ``mode``'s layout is ``mask`` when the
    build wrote it already, else computed from the layout (and written into ``mask_buffer``
    when the backend owns one)."""
    n = tree.budget
    if mask is None:
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
    step: GraftStep, rids: Sequence[str], roots: torch.Tensor, seq_lens: torch.Tensor,
    parent_list: torch.Tensor, scores: torch.Tensor, tokens: torch.Tensor, topk: int, *,
    mask_mode: TreeMaskMode | int | None = None, mask_out: torch.Tensor | None = None,
    seq_lens_sum: int | None = None, root: RetrievedCandidates | None = None,
) -> tuple[GraftTree, torch.Tensor | None]:
    """One step's Graft trees from the draft loop's output (``all_candidates``): roots [bs],
    seq_lens [bs]; each request's draft quota is its checkpoint stage's split (graft-paper);
    ``root``: the tries retrieved at the root before drafting (``GraftStep.retrieve_root``).
    Returns (tree, mask) as ``GraftStep.build`` (the mask in ``mask_mode``'s layout, written
    into ``mask_out`` when given)."""
    draft = draft_candidates(parent_list, scores, tokens, topk)
    return step.build(rids, roots, seq_lens, draft, step.draft_quotas(draft, topk),
                      mask_mode=mask_mode, mask_out=mask_out, seq_lens_sum=seq_lens_sum,
                      root=root)


def _mask_target(target_worker: Any, tree_mask_mode: TreeMaskMode | int, bs: int
                 ) -> tuple[TreeMaskMode | int, torch.Tensor | None]:
    """The target backend's mask layout and its preallocated buffer (None: it has none, or
    the batch does not fit it)."""
    verify_mask = target_worker.model_runner.attn_backend.verify_mask
    mode = tree_mask_mode if verify_mask is None else verify_mask.mode
    buffer = verify_mask.buffer if verify_mask is not None and verify_mask.fits(bs) else None
    return mode, buffer


def plain_verify_input(batch: Any, draft_input: Any, *, target_worker: Any, topk: int,
                       num_steps: int, tree_mask_mode: TreeMaskMode | int,
                       set_width: SetWidth) -> GraftVerifyInput:
    """A plain step through the verify path (no draft, no build): each request's root alone,
    width 1, as SGLang's own ``_build_trivial_verify_input``."""
    set_width(1)
    tree = root_only(draft_input.bonus_tokens, batch.seq_lens)
    mode, buffer = _mask_target(target_worker, tree_mask_mode, tree.batch_size)
    return build_verify_input(tree, batch.seq_lens, mode, topk=topk, num_steps=num_steps,
                              mask_buffer=buffer)


def build_graft_verify_input(
    batch: Any, draft_input: Any, parent_list: torch.Tensor, scores: torch.Tensor,
    tokens: torch.Tensor, draft_probs: torch.Tensor | None, *, target_worker: Any, topk: int,
    num_steps: int, num_draft_tokens: int, tree_mask_mode: TreeMaskMode | int, device: str,
    step: GraftStep, rids: Sequence[str],
    broadcast: Callable[[torch.Tensor], object] | None = None,
    root: RetrievedCandidates | None = None, set_width: SetWidth | None = None,
) -> EagleVerifyInput:
    """Drop-in for SGLang's ``build_eagle_verify_input`` (same positional arguments), with the
    draft loop's (parent_list, scores, tokens) in place of (parent_list, top_scores_index,
    draft_tokens). The build writes the mask straight into the backend's verify-mask buffer
    when the batch fits it (as SGLang's own build does), else into a fresh tensor.
    ``broadcast`` (TP safety switch) replaces the tree by TP rank 0's, whose mask is then
    computed from its layout. ``root``: the tries retrieved at the root before drafting.

    A cost-aware step (the recipe's ``CostPolicy`` with ``set_width``) verifies the prefix
    ``GraftStep.size`` chooses (after the broadcast, so every rank chooses alike), switching
    the worker to that width first; its mask is computed from the prefix's layout."""
    if batch.forward_mode.is_idle():
        return EagleVerifyInput.create_idle_input(topk, num_steps, num_draft_tokens, device)
    bs = batch.seq_lens.shape[0]
    sized = set_width is not None and step.recipe.cost.sizes_verified
    if broadcast is not None or sized:
        tree, _ = step_tree(step, rids, draft_input.bonus_tokens, batch.seq_lens, parent_list,
                            scores, tokens, topk, root=root)
        if broadcast is not None:
            tree = broadcast_tree(tree, broadcast)
        if sized:
            passes = drafted_levels(tokens.shape[1], topk) - 1  # level 0 came with the input
            tree, _ = step.size(tree, passes)
            set_width(tree.budget)
        mode, buffer = _mask_target(target_worker, tree_mask_mode, bs)  # the width's backend
        return build_verify_input(tree, batch.seq_lens, mode, topk=topk, num_steps=num_steps,
                                  mask_buffer=buffer)
    mode, buffer = _mask_target(target_worker, tree_mask_mode, bs)
    tree, mask = step_tree(step, rids, draft_input.bonus_tokens, batch.seq_lens, parent_list,
                           scores, tokens, topk, mask_mode=mode, mask_out=buffer,
                           seq_lens_sum=getattr(batch, "seq_lens_sum", None), root=root)
    if buffer is None and TreeMaskMode(mode) != TreeMaskMode.QLEN_ONLY_BITPACKING:
        mask = mask.view(torch.bool)  # the build's 0/1 bytes, as SGLang's bool masks
    return build_verify_input(tree, batch.seq_lens, mode, topk=topk, num_steps=num_steps,
                              mask=mask)
