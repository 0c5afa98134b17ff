"""The offline engine is lossless: every method's greedy output equals plain greedy decoding.

Targets are tiny random-weight Llamas built here; drafters are a layer-truncated copy of the
target (the bad drafter: retrieval has to carry Graft), an independent tiny draft LM, the target
itself (every draft accepted: long accepted paths), and none (retrieval only).
"""

from __future__ import annotations

import pytest
import torch

from graft_sglang.engine.cached_lm import CachedLM
from graft_sglang.engine.decode import Sampling, SpeculativeEngine
from graft_sglang.engine.drafters.lm import LMDrafter, truncated_copy
from graft_sglang.engine.methods import METHODS, make_method
from graft_sglang.tree.layout import tree_layout
from tests.tiny_models import PROMPTS, VOCAB, tiny_llama


def drafters(target: torch.nn.Module) -> dict[str, LMDrafter]:
    return {
        "truncated": LMDrafter(truncated_copy(target, 1)),
        "draft_lm": LMDrafter(tiny_llama(1, layers=2)),
    }


@pytest.mark.parametrize("budget", [4, 12, 24])
@pytest.mark.parametrize("drafter_name", ["truncated", "draft_lm"])
def test_every_method_greedy_equals_autoregressive(
    target: torch.nn.Module, references: dict[int, list[int]], budget: int, drafter_name: str,
) -> None:
    engine = SpeculativeEngine(target, drafters(target)[drafter_name])
    sampling = Sampling(max_new_tokens=40)
    for i, prompt in enumerate(PROMPTS):
        for name in METHODS:
            method = make_method(name, budget=budget, topk=3, depth=4, threshold=0.2,
                                 vocab_size=VOCAB)
            gen = engine.generate(prompt, method, sampling)
            assert gen.tokens == references[i], (name, budget, i)
            if name != "autoregressive":
                assert gen.verified_nodes <= gen.steps * budget


def test_graft_leans_on_retrieval_with_the_bad_drafter(
    target: torch.nn.Module, references: dict[int, list[int]],
) -> None:
    engine = SpeculativeEngine(target, LMDrafter(truncated_copy(target, 1)))
    sampling = Sampling(max_new_tokens=40)
    dense = graft = 0.0
    grafted = 0
    for prompt in PROMPTS:
        dense += engine.generate(prompt, make_method("dense", 12, 3, 4), sampling).tau
        g = engine.generate(prompt, make_method("graft", 12, 3, 4, threshold=0.2), sampling)
        graft += g.tau
        grafted += g.accepted_grafted
    assert grafted > 0
    assert graft > dense


def test_target_as_its_own_drafter_accepts_every_draft(target: torch.nn.Module,
                                                      references: dict[int, list[int]]) -> None:
    """A perfect drafter: every chain step accepts all budget - 1 drafts."""
    engine = SpeculativeEngine(target, LMDrafter(target))
    gen = engine.generate(PROMPTS[0], make_method("chain", budget=5), Sampling(max_new_tokens=40))
    assert gen.tokens == references[0]
    assert gen.steps == 8 and gen.accepted_drafts == 32


def test_kv_compaction_equals_sequential_cache(target: torch.nn.Module) -> None:
    """After verifying a branching tree and keeping one path, the cache equals the cache of
    running the prefix and that path's tokens one after another."""
    prefix = PROMPTS[1]
    parents = torch.tensor([[-1, 0, 1, 0, 3, 4, 1]])
    tokens = torch.tensor([5, 8, 2, 9, 14, 3, 21])
    layout = tree_layout(parents, torch.tensor([len(prefix)]))
    tree_lm = CachedLM(target)
    tree_lm.forward(torch.tensor(prefix), torch.arange(len(prefix)))
    tree_lm.forward(tokens, layout.positions[0], new_visible=layout.ancestors[0])
    path = [0, 3, 4, 5]
    tree_lm.keep(len(prefix), path)

    seq_lm = CachedLM(target)
    seq_lm.forward(torch.tensor(prefix), torch.arange(len(prefix)))
    for j, node in enumerate(path):
        seq_lm.forward(tokens[node : node + 1], torch.tensor([len(prefix) + j]))
    assert tree_lm.cached_len == seq_lm.cached_len == len(prefix) + len(path)
    for a, b in zip(tree_lm.cache.layers, seq_lm.cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
    # The next token after the kept path matches too.
    nxt = torch.tensor([4])
    pos = torch.tensor([len(prefix) + len(path)])
    torch.testing.assert_close(tree_lm.forward(nxt, pos)[0], seq_lm.forward(nxt, pos)[0],
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["chain", "graft"])
def test_stop_conditions_cut_accepted_paths(target: torch.nn.Module,
                                            references: dict[int, list[int]], name: str) -> None:
    """The target drafts for itself, so whole paths are accepted past the stop points."""
    engine = SpeculativeEngine(target, LMDrafter(target))
    ref = references[0]
    method = make_method(name, budget=8, topk=2, depth=6)
    for max_new in (1, 5, 13):
        gen = engine.generate(PROMPTS[0], method, Sampling(max_new_tokens=max_new))
        assert gen.tokens == ref[:max_new]
    stop = ref[9]
    first = ref.index(stop)
    gen = engine.generate(PROMPTS[0], method, Sampling(max_new_tokens=40, stop_token_ids=(stop,)))
    assert gen.tokens == ref[: first + 1]
    # The model's own EOS stops decoding as well.
    eos_target = tiny_llama(0)
    eos_target.config.eos_token_id = stop
    eos_engine = SpeculativeEngine(eos_target, LMDrafter(eos_target))
    gen = eos_engine.generate(PROMPTS[0], method, Sampling(max_new_tokens=40))
    assert gen.tokens == ref[: first + 1]


def test_bad_arguments_raise(target: torch.nn.Module) -> None:
    engine = SpeculativeEngine(target, None)
    with pytest.raises(ValueError, match="method"):
        make_method("beam")
    with pytest.raises(ValueError, match="budget"):
        make_method("dense", budget=1)
    with pytest.raises(ValueError, match="drafter"):
        engine.generate([1, 2], make_method("dense"), Sampling())
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([1, VOCAB], make_method("retrieval"), Sampling())
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=-1.0)
    with pytest.raises(ValueError, match="num_layers"):
        truncated_copy(target, 0)


@pytest.mark.parametrize("source", ["successor", "both"])
@pytest.mark.parametrize("name", ["retrieval", "graft"])
def test_successor_table_retrieval_is_lossless(target: torch.nn.Module,
                                               references: dict[int, list[int]],
                                               name: str, source: str) -> None:
    """The successor table alone, or competing with suffix retrieval for the slots."""
    engine = SpeculativeEngine(target, LMDrafter(truncated_copy(target, 1)))
    method = make_method(name, budget=16, topk=2, depth=3, retrieval=source)
    grafted = 0
    for i, prompt in enumerate(PROMPTS):
        gen = engine.generate(prompt, method, Sampling(max_new_tokens=40))
        assert gen.tokens == references[i]
        grafted += gen.accepted_grafted
    assert grafted > 0


@pytest.mark.slow
def test_real_model_methods_equal_autoregressive() -> None:
    """The embedded SmolLM2-135M on two short chat prompts, the bad drafter, every method."""
    from graft_sglang.engine.model import load_model
    from graft_sglang.engine.runner import chat_ids, stop_ids

    torch.set_num_threads(1)
    loaded = load_model()
    engine = SpeculativeEngine(loaded.model, LMDrafter(truncated_copy(loaded.model, 1)))
    sampling = Sampling(max_new_tokens=16, stop_token_ids=stop_ids(loaded.tokenizer))
    texts = ("List three prime numbers.", "Repeat exactly: the cat sat on the mat, the cat sat.")
    for text in texts:
        prompt = chat_ids(loaded.tokenizer, text)
        reference = engine.generate(prompt, make_method("autoregressive"), sampling).tokens
        assert len(reference) > 5
        for name in METHODS[1:]:
            method = make_method(name, budget=8, topk=2, depth=3,
                                 vocab_size=loaded.model.config.vocab_size)
            assert engine.generate(prompt, method, sampling).tokens == reference, (name, text)


def test_workloads_load_from_installed_packages() -> None:
    from graft_sglang.datasets import load

    mtbench = load("mtbench")
    assert len(mtbench) == 80 and all(r["prompt"] for r in mtbench)
    longctx = load("longctx")
    assert len(longctx) >= 4
    assert all("```python\n" in r["prompt"] and len(r["prompt"]) > 2000 for r in longctx)
    with pytest.raises(ValueError, match="dataset"):
        load("wikitext")
