"""The EAGLE-3 head: token maps, SGLang-format export round trip, training, and lossless
drafting in the offline engine (tiny random models; the committed head in a slow test)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from graft_sglang.eagle3.export import ARCHITECTURE, load_head, save_head
from graft_sglang.eagle3.head import Eagle3Head, HeadConfig
from graft_sglang.eagle3.train import Batch, batches, collate, target_to_draft_map, ttt_loss
from graft_sglang.engine.drafters.eagle3 import Eagle3Drafter

VOCAB = 96
TINY = HeadConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, vocab_size=VOCAB, draft_vocab_size=40)
FEATURE_LAYERS = (1, 2, 3)


def tiny_head(seed: int = 0, config: HeadConfig = TINY) -> Eagle3Head:
    torch.manual_seed(seed)
    head = Eagle3Head(config, torch.randn(config.vocab_size, config.hidden_size))
    head.set_draft_vocab(torch.randperm(config.vocab_size)[: config.draft_vocab_size])
    return head


def observed_drafter(head: Eagle3Head, length: int = 12, seed: int = 1) -> Eagle3Drafter:
    gen = torch.Generator().manual_seed(seed)
    drafter = Eagle3Drafter(head, FEATURE_LAYERS)
    tokens = torch.randint(0, VOCAB, (length,), generator=gen)
    feats = {layer: torch.randn(length, head.config.hidden_size, generator=gen)
             for layer in FEATURE_LAYERS}
    drafter.observe(tokens[:7], {k: v[:7] for k, v in feats.items()})
    drafter.observe(tokens[7:], {k: v[7:] for k, v in feats.items()})
    return drafter


def test_token_maps_round_trip() -> None:
    head = tiny_head()
    d2t = head.draft_to_target
    assert int(head.t2d.sum()) == TINY.draft_vocab_size
    assert bool(head.t2d[d2t].all())
    t2d = target_to_draft_map(head)
    assert torch.equal(t2d[d2t], torch.arange(TINY.draft_vocab_size))
    assert torch.equal(t2d >= 0, head.t2d)
    with pytest.raises(ValueError, match="target_ids"):
        head.set_draft_vocab(torch.zeros(TINY.draft_vocab_size, dtype=torch.int64))
    with pytest.raises(ValueError, match="target_ids"):
        head.set_draft_vocab(torch.arange(TINY.draft_vocab_size) + VOCAB)


def test_export_round_trip_gives_identical_drafts(tmp_path) -> None:
    head = tiny_head()
    with torch.no_grad():  # the exported weights are bf16: compare against the rounded head
        for p in head.parameters():
            p.copy_(p.bfloat16().float())
    save_head(head, FEATURE_LAYERS, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == [ARCHITECTURE] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == TINY.draft_vocab_size
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [0, 1, 2]
    loaded, layers = load_head(tmp_path, head.embed_tokens.weight)
    assert layers == FEATURE_LAYERS
    for name, value in head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    a = observed_drafter(head).propose(5, topk=3, depth=4)
    b = observed_drafter(loaded).propose(5, topk=3, depth=4)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    assert torch.equal(a.scores, b.scores)


def test_load_rejects_other_checkpoints(tmp_path) -> None:
    save_head(tiny_head(), FEATURE_LAYERS, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="path"):
        load_head(tmp_path, torch.zeros(VOCAB, TINY.hidden_size))


def test_drafter_chain_matches_the_training_unroll() -> None:
    """The drafter's KV-cached tree attention and the training-time unroll compute the same
    thing: along a chain of true tokens, the drafter's per-level top-1 hits equal the TTT
    accuracy on that single position."""
    head = tiny_head(3, HeadConfig(**{**TINY.to_dict(), "draft_vocab_size": VOCAB}))
    gen = torch.Generator().manual_seed(2)
    length, prompt_len, steps = 14, 9, 4
    tokens = torch.randint(0, VOCAB, (length,), generator=gen)
    feats = torch.randn(length, 3, TINY.hidden_size, generator=gen)
    drafter = Eagle3Drafter(head, FEATURE_LAYERS)
    drafter.observe(tokens[:prompt_len - 1],
                    {layer: feats[: prompt_len - 1, i] for i, layer in enumerate(FEATURE_LAYERS)})
    # Chain of topk=1 from the root tokens[prompt_len - 1]; the unroll feeds the true tokens, so
    # make the true tokens the drafter's own greedy chain.
    chain = drafter.propose(int(tokens[prompt_len - 1]), topk=1, depth=steps)
    tokens[prompt_len: prompt_len + steps] = chain.tokens[0]
    rows = [{"tokens": tokens[: prompt_len + steps].int(), "prompt_len": prompt_len,
             "features": feats[: prompt_len + steps].half().float()}]
    # Only the chain starting at position prompt_len - 2 is scored; it predicts the chain tokens.
    batch = collate(rows)
    batch = Batch(batch.tokens, batch.features.float(), batch.lengths, batch.prompt_lens)
    drafter = Eagle3Drafter(head, FEATURE_LAYERS)
    drafter.observe(tokens[:prompt_len - 1], {layer: batch.features[0, : prompt_len - 1,
                    i * TINY.hidden_size:(i + 1) * TINY.hidden_size]
                    for i, layer in enumerate(FEATURE_LAYERS)})
    chain = drafter.propose(int(tokens[prompt_len - 1]), topk=1, depth=steps)
    with torch.no_grad():
        _, acc = ttt_loss(head, batch, steps, target_to_draft_map(head))
    # Step k scores the `steps` chains whose label (at i + k + 2) lies in the response; one of
    # them is the drafter's chain (i = prompt_len - 2), whose labels are its own top-1 picks.
    assert all(round(a * steps) >= 1 for a in acc), acc
    assert torch.equal(chain.tokens[0], tokens[prompt_len: prompt_len + steps])


def synthetic_rows(count: int, length: int, seed: int,
                   lm_head: torch.Tensor | None = None) -> list[dict]:
    """Token sequences following a fixed permutation, learnable from the token embedding alone
    (the features are zero, so nothing can be memorised from them). With ``lm_head`` [V, H]
    (unit rows), each row also gets the target's final states: ``8 * lm_head[next token]``,
    whose logits peak at the next token (soft labels)."""
    step = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        seq = [int(torch.randint(0, VOCAB, (1,), generator=gen))]
        for _ in range(length - 1):
            seq.append(int(step[seq[-1]]))
        row = {"tokens": torch.tensor(seq, dtype=torch.int32), "prompt_len": 2,
               "features": torch.zeros(length, 3, TINY.hidden_size).half()}
        if lm_head is not None:
            row["final"] = (8 * lm_head[step[torch.tensor(seq)]]).half()
        rows.append(row)
    return rows


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_tiny_head_trains(labels: str) -> None:
    torch.manual_seed(0)
    head = tiny_head(0, HeadConfig(**{**TINY.to_dict(), "draft_vocab_size": VOCAB}))
    head.set_draft_vocab(torch.arange(VOCAB))
    lm_head = None
    if labels == "soft":
        with torch.no_grad():
            head.lm_head.weight.div_(head.lm_head.weight.norm(dim=1, keepdim=True))
        head.lm_head.weight.requires_grad_(False)
        lm_head = head.lm_head.weight.detach()
    t2d = target_to_draft_map(head)
    train = batches(synthetic_rows(32, 16, 0, lm_head), 128, random.Random(0))
    held = collate(synthetic_rows(8, 16, 1, lm_head))
    assert (held.final is None) == (labels == "hard")
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=1e-2)
    with torch.no_grad():
        before, acc_before = ttt_loss(head, held, 3, t2d)
    for i in range(60):
        loss, _ = ttt_loss(head, collate(train[i % len(train)]), 3, t2d)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, acc_after = ttt_loss(head, held, 3, t2d)
    assert float(after) < 0.5 * float(before)
    assert acc_after[0] > 0.5 > acc_before[0]


@pytest.mark.parametrize("method_name", ["dense", "graft"])
def test_engine_with_the_head_equals_greedy(method_name: str) -> None:
    """Lossless: the offline engine drafting with an EAGLE-3 head (fed the target's features)
    reproduces plain greedy decoding of a tiny random Llama."""
    transformers = pytest.importorskip("transformers")
    from graft_sglang.engine.decode import Sampling, SpeculativeEngine
    from graft_sglang.engine.methods import make_method

    torch.manual_seed(0)
    target = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=None, bos_token_id=None, pad_token_id=None)).eval()
    with torch.no_grad():
        target.lm_head.weight.mul_(6.0)  # sharper: repeats worth drafting
    head = Eagle3Head(TINY, target.get_input_embeddings().weight)
    head.set_draft_vocab(torch.arange(TINY.draft_vocab_size))
    engine = SpeculativeEngine(target, Eagle3Drafter(head, FEATURE_LAYERS))
    prompt = [3, 17, 5, 3, 17, 5, 40, 2]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
    method = make_method(method_name, budget=12, topk=3, depth=4, threshold=0.2,
                         vocab_size=VOCAB)
    gen = engine.generate(prompt, method, Sampling(max_new_tokens=30))
    assert gen.tokens == ids[len(prompt):]


@pytest.mark.slow
def test_committed_head_is_lossless_and_accepts_drafts() -> None:
    """The shipped head on the embedded target: greedy output equals plain greedy decoding, and
    a dense N=32 tree commits more than one token per target forward."""
    from graft_sglang.eagle3.export import WEIGHTS_DIR
    from graft_sglang.engine.decode import Sampling, SpeculativeEngine
    from graft_sglang.engine.drafters.eagle3 import load_eagle3_drafter
    from graft_sglang.engine.methods import make_method
    from graft_sglang.engine.model import load_model
    from graft_sglang.engine.runner import chat_ids

    if not (WEIGHTS_DIR / "model.safetensors").is_file():
        pytest.skip("no committed head")
    try:
        loaded = load_model()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    prompt = chat_ids(loaded.tokenizer, "Explain how a hash map works, with a short example.")
    reference, ids, cache = [], torch.tensor([prompt]), None
    with torch.no_grad():  # plain greedy, token by token, no stop rule (like the engine here)
        for _ in range(40):
            out = loaded.model(input_ids=ids, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            reference.append(int(out.logits[0, -1].argmax()))
            ids = torch.tensor([[reference[-1]]])
    engine = SpeculativeEngine(loaded.model, load_eagle3_drafter(loaded.model))
    gen = engine.generate(prompt, make_method("dense", budget=32, topk=4, depth=6),
                          Sampling(max_new_tokens=40))
    assert gen.tokens == reference
    assert gen.tau > 1.3


@pytest.mark.slow
def test_self_instruct_prompts_are_seeded_and_filtered() -> None:
    """User turns sampled from the embedded chat model: the same seed gives the same prompts,
    and a prompt sharing an 8-word run with an excluded (held-out) text is never returned."""
    from graft_sglang.eagle3.prompts import HELDOUT_NGRAM, self_instruct_prompts
    from graft_sglang.engine.model import load_model

    try:
        loaded = load_model()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    model, tok = loaded.model, loaded.tokenizer
    first, rejected = self_instruct_prompts(model, tok, 3, seed=7, max_new_tokens=40)
    again, _ = self_instruct_prompts(model, tok, 3, seed=7, max_new_tokens=40)
    assert first == again and len(set(first)) == 3
    assert all(len(p.split()) >= 4 and "<|im" not in p for p in first)
    assert set(rejected) == {"unfinished", "short", "duplicate", "heldout_overlap"}
    long_ones = [p for p in first if len(p.split()) >= HELDOUT_NGRAM]
    assert long_ones, "no sample long enough to test the held-out filter"
    held_out = [f"Question: {long_ones[0]} (held out)"]
    kept, rejected = self_instruct_prompts(model, tok, 3, seed=7, max_new_tokens=40,
                                           exclude=held_out)
    assert long_ones[0] not in kept and rejected["heldout_overlap"] >= 1
