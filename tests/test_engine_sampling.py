"""Sampling through speculative trees has exactly the target's distribution.

On a tiny random Llama with an 8-token vocabulary, the joint distribution of the first two
sampled tokens is computed exactly (all 8 x 8 continuations), then compared with the empirical
distribution of 1200 seeded engine runs by a chi-square goodness-of-fit test at significance
level 0.001 (cells with expected count < 5 pooled). A negative control (the same samples
against the distribution at another temperature) must be rejected, so the test can fail.
"""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.lm import LMDrafter
from graft_sglang.engine.methods import make_method
from graft_sglang.verify import target_probs
from tests.test_engine import tiny_llama

VOCAB = 8
RUNS = 1200
ALPHA = 1e-3
PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]


def exact_joint(model: torch.nn.Module, temperature: float, top_k: int,
                top_p: float) -> torch.Tensor:
    """[V, V] probability of sampling (t1, t2) after PROMPT."""
    with torch.no_grad():
        first = target_probs(model(torch.tensor([PROMPT])).logits[0, -1], temperature, top_k,
                             top_p)
        seqs = torch.tensor([[*PROMPT, t] for t in range(VOCAB)])
        second = target_probs(model(seqs).logits[:, -1], temperature, top_k, top_p)
    return first.unsqueeze(1) * second


def p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.flatten().double() * counts.sum()
    observed = counts.flatten().double()
    small = expected < 5
    exp = torch.cat([expected[~small], expected[small].sum().view(1)])
    obs = torch.cat([observed[~small], observed[small].sum().view(1)])
    keep = exp > 0
    exp = exp * (obs.sum() / exp[keep].sum())  # scipy wants equal totals to ~1e-8
    return float(chisquare(obs[keep].numpy(), exp[keep].numpy()).pvalue)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "temperature", "top_k", "top_p"),
                         [("graft", 1.0, 0, 1.0), ("dense", 0.8, 5, 0.9)])
def test_first_tokens_follow_target_distribution(name: str, temperature: float, top_k: int,
                                                 top_p: float) -> None:
    torch.set_num_threads(1)
    target = tiny_llama(3, layers=2, sharpen=5.0, vocab=VOCAB)
    engine = SpeculativeEngine(target, LMDrafter(tiny_llama(4, layers=1, sharpen=2.0,
                                                            vocab=VOCAB)))
    method = make_method(name, budget=8, topk=2, depth=3, threshold=0.05, vocab_size=VOCAB)
    counts = torch.zeros(VOCAB, VOCAB)
    accepted = 0
    for seed in range(RUNS):
        gen = engine.generate(PROMPT, method, Sampling(temperature, top_k, top_p, seed=seed,
                                                       max_new_tokens=2))
        counts[gen.tokens[0], gen.tokens[1]] += 1
        accepted += gen.accepted_drafts
    assert accepted > RUNS // 4  # the trees did accept tokens, not only bonus samples
    assert p_value(counts, exact_joint(target, temperature, top_k, top_p)) > ALPHA
    # Negative control: the same samples are recognisably not from another temperature.
    assert p_value(counts, exact_joint(target, 2.5 * temperature, top_k, top_p)) < ALPHA
