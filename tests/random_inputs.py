"""Random builder inputs shaped like real ones: an EAGLE draft loop and retrieved tries."""

from __future__ import annotations

import torch

from graft_sglang.retrieval.base import Continuations
from graft_sglang.tree.draft import DraftCandidates, from_eagle_draft_loop
from graft_sglang.tree.retrieved import RetrievedCandidates, pack_retrieved


def eagle_loop_lists(
    gen: torch.Generator, bs: int, topk: int, depth: int, vocab: int, peaked: float = 2.0
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """(score_list, token_list, parents_list) exactly as SGLang's EAGLE draft loop leaves them
    (``select_top_k_tokens`` arithmetic) on random draft distributions over ``vocab`` tokens;
    siblings are distinct tokens by construction."""

    def level(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(torch.randn(rows, vocab, generator=gen) * peaked, dim=-1)
        return torch.topk(probs, topk, dim=-1)

    p0, i0 = level(bs)
    score_list, token_list = [p0.unsqueeze(1)], [i0]
    parents_list = [torch.arange(-1, topk).expand(bs, -1)]
    scores = p0
    for i in range(1, depth):
        p, idx = level(bs * topk)
        expand = scores.unsqueeze(2) * p.view(bs, topk, topk)
        scores, top_i = torch.topk(expand.flatten(1), topk, dim=-1)
        score_list.append(expand)
        token_list.append(idx.view(bs, topk * topk))
        parents_list.append(top_i + topk * topk * (i - 1) + topk)
    return score_list, token_list, parents_list


def eagle_draft(
    gen: torch.Generator, bs: int, topk: int, depth: int, vocab: int, peaked: float = 2.0
) -> DraftCandidates:
    """``eagle_loop_lists`` flattened into draft candidates."""
    return from_eagle_draft_loop(*eagle_loop_lists(gen, bs, topk, depth, vocab, peaked), topk)


def random_trie(gen: torch.Generator, size: int, vocab: int) -> Continuations:
    tokens, parents, probs = [], [], []
    for i in range(size):
        parents.append(int(torch.randint(-1, i, (1,), generator=gen)) if i else -1)
        tokens.append(int(torch.randint(0, vocab, (1,), generator=gen)))
        probs.append(float(torch.rand(1, generator=gen)) * 0.99 + 0.01)
    return Continuations(tokens, parents, probs)


def random_retrieved(
    gen: torch.Generator, bs: int, num_draft: int, vocab: int, max_slots: int, max_tries: int = 3
) -> RetrievedCandidates:
    per_request = []
    for _ in range(bs):
        tries = []
        for _ in range(int(torch.randint(0, max_tries + 1, (1,), generator=gen))):
            anchor = int(torch.randint(-1, num_draft, (1,), generator=gen)) if num_draft else -1
            size = int(torch.randint(1, max(2, max_slots // 2 + 1), (1,), generator=gen))
            tries.append((anchor, random_trie(gen, size, vocab)))
        per_request.append(tries)
    return pack_retrieved(per_request, num_draft, max_slots)
