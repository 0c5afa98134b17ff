"""Self-distillation data: the target's own greedy responses and its hidden states.

Each shard's prompts are ``--chat-share`` user turns sampled from the target itself
(``prompts.self_instruct_prompts``, seeded by the shard index) and the rest package-text prompts
(``prompts.build_prompts``); nothing from the evaluation sets (``graft_sglang.datasets``). Each
shard (``shard_XXXX.pt``: ``{"rows": [...], "self_instruct_rejected": {reason: count}}``) holds,
per sequence, its ``source`` and ``prompt`` text, the chat-formatted prompt + greedy response
token ids ``[L]`` (int32), the prompt length, the target's hidden states at the feature
layers ``[L, 3, H]`` (fp16) and its final-norm output ``[L, H]`` (fp16; ``lm_head`` of it is the
target's next-token logits, the soft labels of training), recomputed by one forward over prompt +
response. Shards are written as they finish, so generation is resumable, several workers can
share the shards (``--worker i --workers w``), and training can start on a partial set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from graft_sglang.datasets import heldout_texts
from graft_sglang.eagle3.prompts import build_prompts, self_instruct_prompts
from graft_sglang.engine.model import cache_dir, load_model

FEATURE_LAYERS = (2, 15, 27)
"""Indices into the target's ``hidden_states`` tuple (a low, middle and high layer of 30); in
SGLang's terms ``eagle_aux_hidden_state_layer_ids = [i - 1 for i in FEATURE_LAYERS]``."""


def default_data_dir() -> Path:
    return cache_dir() / "eagle3" / "data"


def shard_prompts(model: torch.nn.Module, tokenizer: object, shard: int, batch_size: int,
                  chat_share: float, package_prompts: list[str], exclude: list[str],
                  ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """The (source, prompt) pairs of one shard and the self-instruct rejection counts."""
    num_chat = round(batch_size * chat_share)
    chat, rejected = self_instruct_prompts(model, tokenizer, num_chat, seed=shard,
                                           exclude=exclude) if num_chat else ([], {})
    per_shard = batch_size - num_chat
    package = package_prompts[shard * per_shard:(shard + 1) * per_shard]
    return [("self-instruct", p) for p in chat] + [("package-text", p) for p in package], \
        rejected


@torch.no_grad()
def generate_batch(
    model: torch.nn.Module, tokenizer: object, prompts: list[str], max_new_tokens: int,
    feature_layers: tuple[int, ...] = FEATURE_LAYERS,
) -> list[dict[str, torch.Tensor | int]]:
    """Greedy responses to ``prompts`` (one left-padded batch) with their feature-layer states."""
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                           add_generation_prompt=True, tokenize=False)
             for p in prompts]
    tokenizer.padding_side = "left"
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    prompt_width = enc["input_ids"].shape[1]
    mask = torch.cat([enc["attention_mask"], torch.ones_like(out[:, prompt_width:])], dim=1)
    # Positions after the first EOS are padding from other rows still generating.
    response = out[:, prompt_width:]
    ended = (response == eos).int().cumsum(1) - (response == eos).int() > 0
    mask[:, prompt_width:] &= ~ended
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    final: list[torch.Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda _m, _i, o: final.append(o))
    try:
        hidden = model(input_ids=out, attention_mask=mask, position_ids=positions,
                       output_hidden_states=True).hidden_states
    finally:
        hook.remove()
    features = torch.stack([hidden[i] for i in feature_layers], dim=2).half()  # [bs, L, 3, H]
    last = final[0].half()  # [bs, L, H]
    rows = []
    for b in range(len(prompts)):
        keep = mask[b].bool()
        rows.append({
            "tokens": out[b, keep].int(),
            "prompt_len": int(enc["attention_mask"][b].sum()),
            "features": features[b, keep].clone(),
            "final": last[b, keep].clone(),
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=default_data_dir())
    parser.add_argument("--num-prompts", type=int, default=3200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--chat-share", type=float, default=0.75,
                        help="share of each shard's prompts sampled from the target itself")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", type=int, default=0, help="this worker's index")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers sharing the shards (worker i makes shards i, i+w, ...)")
    parser.add_argument("--deadline-min", type=float, default=0.0,
                        help="stop after this many minutes (0 = no limit); shards stay usable")
    args = parser.parse_args(argv)
    if not 0 <= args.worker < args.workers:
        parser.error(f"--worker {args.worker} must be in [0, --workers {args.workers})")
    if not 0.0 <= args.chat_share <= 1.0:
        parser.error(f"--chat-share must be in [0, 1], got {args.chat_share}")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    num_shards = -(-args.num_prompts // args.batch_size)
    per_shard = args.batch_size - round(args.batch_size * args.chat_share)
    package_prompts = build_prompts(num_shards * per_shard)
    exclude = heldout_texts()
    loaded = load_model()
    tokens_done = 0
    for shard in range(num_shards):
        path = args.out / f"shard_{shard:04d}.pt"
        if shard % args.workers != args.worker or path.exists():  # another's, or resumed
            continue
        pairs, rejected = shard_prompts(loaded.model, loaded.tokenizer, shard, args.batch_size,
                                        args.chat_share, package_prompts, exclude)
        rows = generate_batch(loaded.model, loaded.tokenizer, [p for _, p in pairs],
                              args.max_new_tokens)
        for row, (source, prompt) in zip(rows, pairs, strict=True):
            row["source"], row["prompt"] = source, prompt
        torch.save({"rows": rows, "self_instruct_rejected": rejected}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
        tokens_done += sum(len(r["tokens"]) - r["prompt_len"] for r in rows)
        elapsed = time.time() - start
        print(f"[data] shard {shard + 1}/{num_shards}: {tokens_done} response tokens this run, "
              f"{elapsed:.0f} s; self-instruct rejected {rejected}", file=sys.stderr,
              flush=True)
        if args.deadline_min and elapsed > 60 * args.deadline_min:
            print("[data] deadline reached, stopping", file=sys.stderr)
            break


if __name__ == "__main__":
    main()
