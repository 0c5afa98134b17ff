"""Tiny random-weight Llama targets for engine tests (the fixtures live in conftest.py)."""

from __future__ import annotations

import torch
import transformers

VOCAB = 32
PROMPTS = ([1, 2, 3, 4, 5, 1, 2, 3], [7, 7, 9, 3, 7, 7, 9], [11, 30, 4, 16, 11, 30])


def tiny_llama(seed: int, layers: int = 3, sharpen: float = 6.0,
               vocab: int = VOCAB) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=None, bos_token_id=None, pad_token_id=None,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper outputs: greedy text with repeats worth retrieving
        model.lm_head.weight.mul_(sharpen)
    return model


def greedy_references(target: torch.nn.Module, steps: int = 40) -> dict[int, list[int]]:
    """Plain greedy decoding of every prompt with full recomputation (no cache, no engine)."""
    out = {}
    with torch.no_grad():
        for i, prompt in enumerate(PROMPTS):
            ids = list(prompt)
            for _ in range(steps):
                ids.append(int(target(torch.tensor([ids])).logits[0, -1].argmax()))
            out[i] = ids[len(prompt):]
    return out
