"""Greedy decoding through grafted trees is token-identical to plain greedy decoding.

A tiny random-weight Llama is the target; every step builds a Graft tree from random drafts
(a bad drafter) and retrieved chains (some right, some wrong), verifies it in one forward with a
4D tree mask and explicit positions, and commits the accepted tokens.
"""

from __future__ import annotations

import pytest
import torch

from graft_sglang.retrieval.base import Continuations
from graft_sglang.tree.builder import GraftConfig, GraftTree, build_graft_tree
from graft_sglang.tree.retrieved import pack_retrieved
from graft_sglang.verify import verify_tree_greedy
from tests.random_inputs import eagle_draft

transformers = pytest.importorskip("transformers")

VOCAB = 24


@pytest.fixture(scope="module")
def tiny_lm() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    # Sharpen the output so greedy continuations have structure worth retrieving.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model


def greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def verify_forward(model: torch.nn.Module, context: list[int], tree: GraftTree) -> torch.Tensor:
    """Target argmax at every tree node: prefix = context[:-1], node 0 = context[-1]."""
    prefix = context[:-1]
    p, n = len(prefix), tree.budget
    allowed = torch.zeros(p + n, p + n, dtype=torch.bool)
    allowed[:p, :p] = torch.tril(torch.ones(p, p, dtype=torch.bool))
    allowed[p:, :p] = True
    allowed[p:, p:] = tree.layout.ancestors[0]
    mask = torch.zeros(1, 1, p + n, p + n).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ids = torch.tensor([prefix + tree.tokens[0].tolist()])
    pos = torch.cat([torch.arange(p), tree.layout.positions[0]]).unsqueeze(0)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=pos).logits
    return logits[0, p:].argmax(dim=-1).unsqueeze(0)


@pytest.mark.parametrize(("budget", "threshold"), [(4, 0.5), (12, 0.2), (24, None), (24, 0.05)])
def test_greedy_lossless(tiny_lm: torch.nn.Module, budget: int, threshold: float | None) -> None:
    gen = torch.Generator().manual_seed(budget)
    total_accepted = 0
    for prompt in ([1, 2, 3], [5, 9, 5, 9, 5], [7] * 6):
        new_tokens = 30
        reference = greedy(tiny_lm, prompt, new_tokens)
        context = list(prompt)
        steps = 0
        while len(context) - len(prompt) < new_tokens:
            done = len(context) - len(prompt)
            draft = eagle_draft(gen, 1, 3, 3, VOCAB)
            # One chain of the true continuation with a random corruption, one random chain.
            truth = reference[done : done + 6]
            if truth:
                cut = int(torch.randint(0, len(truth), (1,), generator=gen))
                truth = [*truth[:cut], int(torch.randint(0, VOCAB, (1,), generator=gen))]
            noise = torch.randint(0, VOCAB, (4,), generator=gen).tolist()
            retrieved = pack_retrieved(
                [[(-1, Continuations.chain(truth, [0.9] * len(truth))),
                  (0, Continuations.chain(noise, [0.5] * 4))]],
                draft.num_candidates, 12,
            )
            tree = build_graft_tree(
                torch.tensor([context[-1]]), torch.tensor([len(context) - 1]), draft, retrieved,
                GraftConfig(budget=budget, threshold=threshold, vocab_size=VOCAB),
            )
            res = verify_tree_greedy(tree.tokens, tree.layout,
                                     verify_forward(tiny_lm, context, tree), max_depth=budget)
            accepted = res.accepted_tokens(0)
            total_accepted += len(accepted) - 1
            context.extend(accepted)
            steps += 1
        assert context[len(prompt) : len(prompt) + new_tokens] == reference
        assert steps < new_tokens  # speculation did accept something
    assert total_accepted > 0
