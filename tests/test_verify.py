"""Reference verification: greedy walks the target's path; sampling is distribution-exact."""

from __future__ import annotations

import math

import pytest
import torch

from graft_sglang.retrieval.base import Continuations
from graft_sglang.tree.builder import GraftConfig, build_graft_tree
from graft_sglang.tree.layout import tree_layout
from graft_sglang.tree.retrieved import pack_retrieved
from graft_sglang.verify import target_probs, verify_tree_greedy, verify_tree_target_only
from tests.random_inputs import eagle_draft


def test_greedy_reference_example() -> None:
    """Internals note §9: grafted chain 4->5->6 under node 2; three drafts plus the bonus."""
    lay = tree_layout(torch.tensor([[-1, 0, 0, 1, 2, 4, 5, 0]]), torch.tensor([10]))
    tokens = torch.tensor([[5, 1, 2, 3, 4, 6, 7, 8]])
    target = torch.zeros(1, 8, dtype=torch.int64)
    target[0, 0], target[0, 2], target[0, 4], target[0, 5] = 2, 4, 6, 9
    res = verify_tree_greedy(tokens, lay, target, max_depth=8)
    assert res.accept_index.tolist() == [[0, 2, 4, 5, -1, -1, -1, -1]]
    assert res.accept_length.tolist() == [3]
    assert res.accepted_tokens(0) == [2, 4, 6, 9]
    # An accept width of 3 (EAGLE's spec_steps + 1 for steps=2) cuts the grafted chain.
    assert verify_tree_greedy(tokens, lay, target, max_depth=3).accepted_tokens(0) == [2, 4, 6]


def test_greedy_matches_walk_on_random_trees() -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(50):
        bs, vocab = 4, 5
        draft = eagle_draft(gen, bs, 3, 3, vocab)
        tree = build_graft_tree(torch.zeros(bs, dtype=torch.int64), torch.zeros(bs), draft,
                                pack_retrieved([[]] * bs, draft.num_candidates, 0),
                                GraftConfig(budget=12, threshold=None))
        target = torch.randint(0, vocab, (bs, 12), generator=gen)
        res = verify_tree_greedy(tree.tokens, tree.layout, target, max_depth=12)
        for b in range(bs):
            toks, pars = tree.tokens[b].tolist(), tree.parents[b].tolist()
            cur, expect = 0, []
            while True:
                want = int(target[b, cur])
                expect.append(want)
                nxt = [i for i in range(12) if pars[i] == cur and toks[i] == want]
                if not nxt:
                    break
                cur = nxt[0]
            assert res.accepted_tokens(b) == expect


class VirtualLM:
    """A target LM over a tiny vocabulary: next-token logits are a fixed random function of
    the whole context."""

    def __init__(self, vocab: int, seed: int, temperature: float, top_k: int, top_p: float):
        self.vocab, self.seed = vocab, seed
        self.params = (temperature, top_k, top_p)
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def probs(self, context: tuple[int, ...]) -> torch.Tensor:
        if context not in self.cache:
            g = torch.Generator().manual_seed(hash((self.seed, *context)) & 0x7FFFFFFF)
            logits = torch.randn(self.vocab, generator=g) * 1.5
            self.cache[context] = target_probs(logits, *self.params)
        return self.cache[context]


def _sample_prefix(lm: VirtualLM, gen: torch.Generator, length: int, tree_fn) -> tuple[int, ...]:
    """Decode ``length`` tokens with tree speculation; returns the emitted tokens."""
    out: list[int] = [0]  # context starts with a fixed root token
    while len(out) < length + 1:
        tokens, parents = tree_fn(gen, out[-1])
        n = len(tokens)
        lay = tree_layout(torch.tensor([parents]), torch.tensor([len(out) - 1]))
        paths: list[tuple[int, ...]] = [tuple(out)]
        for i in range(1, n):
            paths.append(paths[parents[i]] + (tokens[i],))
        probs = torch.stack([lm.probs(p) for p in paths]).unsqueeze(0)
        res = verify_tree_target_only(
            torch.tensor([tokens]), lay, probs, torch.rand(1, n, generator=gen),
            torch.rand(1, generator=gen), max_depth=n,
        )
        out.extend(res.accepted_tokens(0))
    return tuple(out[1 : length + 1])


def _graft_tree(vocab: int):
    """Random drafts (possibly bad) plus a retrieved one-hot chain, built by the real builder."""

    def make(gen: torch.Generator, root: int) -> tuple[list[int], list[int]]:
        draft = eagle_draft(gen, 1, 2, 2, vocab, peaked=1.0)
        chain = torch.randint(0, vocab, (3,), generator=gen).tolist()
        retrieved = pack_retrieved(
            [[(-1, Continuations.chain(chain, [0.9, 0.9, 0.9]))]], draft.num_candidates, 3
        )
        tree = build_graft_tree(torch.tensor([root]), torch.tensor([0]), draft, retrieved,
                                GraftConfig(budget=7, threshold=0.2, vocab_size=vocab))
        return tree.tokens[0].tolist(), tree.parents[0].tolist()

    return make


def _duplicate_sibling_tree(gen: torch.Generator, root: int) -> tuple[list[int], list[int]]:
    """A tree the builder never emits: the same token twice under the root."""
    return [root, 1, 1, 2], [-1, 0, 0, 1]


def _chi_square_pvalue(counts: dict, lm: VirtualLM, length: int, trials: int) -> float:
    import itertools

    from scipy.stats import chi2

    stat, dof = 0.0, -1
    for seq in itertools.product(range(lm.vocab), repeat=length):
        p, ctx = 1.0, (0,)
        for t in seq:
            p *= float(lm.probs(ctx)[t])
            ctx = (*ctx, t)
        if p == 0.0:
            assert counts.get(seq, 0) == 0, f"impossible sequence {seq} was emitted"
            continue
        expected = p * trials
        stat += (counts.get(seq, 0) - expected) ** 2 / expected
        dof += 1
    return float(chi2.sf(stat, dof))


ALPHA = 1e-3  # significance level of the distribution tests (fixed seeds: deterministic)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 3, 0.9)],
)
def test_target_only_sampling_is_exact(temperature: float, top_k: int, top_p: float) -> None:
    """The first three emitted tokens follow the target's joint distribution (chi-square over
    all 4^3 sequences, 6000 draws)."""
    vocab, length, trials = 4, 3, 6000
    lm = VirtualLM(vocab, seed=11, temperature=temperature, top_k=top_k, top_p=top_p)
    gen = torch.Generator().manual_seed(2024)
    counts: dict[tuple[int, ...], int] = {}
    make = _graft_tree(vocab)
    for _ in range(trials):
        seq = _sample_prefix(lm, gen, length, make)
        counts[seq] = counts.get(seq, 0) + 1
    assert _chi_square_pvalue(counts, lm, length, trials) > ALPHA


def test_sampling_test_detects_a_biased_tree() -> None:
    """Power check: duplicate siblings double-count a token's mass and the test rejects it."""
    vocab, length, trials = 4, 2, 6000
    lm = VirtualLM(vocab, seed=5, temperature=1.0, top_k=0, top_p=1.0)
    gen = torch.Generator().manual_seed(7)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(trials):
        seq = _sample_prefix(lm, gen, length, _duplicate_sibling_tree)
        counts[seq] = counts.get(seq, 0) + 1
    assert _chi_square_pvalue(counts, lm, length, trials) < ALPHA


def test_target_probs_rules() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    p = target_probs(logits, temperature=1.0, top_k=2)
    assert p[0, 2:].sum() == 0 and math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)
    p = target_probs(logits, top_p=0.5)
    assert p[0, 0] == 1.0
    for kwargs, match in [({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"),
                          ({"top_p": 0.0}, "top_p")]:
        with pytest.raises(ValueError, match=match):
            target_probs(logits, **kwargs)


def test_verify_argument_errors() -> None:
    lay = tree_layout(torch.tensor([[-1, 0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="max_depth"):
        verify_tree_greedy(torch.tensor([[1, 2]]), lay, torch.zeros(1, 2, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="bs, N"):
        verify_tree_greedy(torch.tensor([[1, 2, 3]]), lay, torch.zeros(1, 3, dtype=torch.int64), 2)
