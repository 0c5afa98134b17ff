"""Training the EAGLE-3 head with training-time test (TTT) on self-distilled data.

Each example is a whole sequence (prompt + the target's greedy response). Step 0 feeds, at every
position ``i``, the target features at ``i`` and the token at ``i + 1``; step ``k`` feeds the head's
own step-``k-1`` output and the true token at ``i + k + 1`` at position ``i + k`` and predicts the
token at ``i + k + 2``. Attention at step ``k`` mirrors a draft chain at inference: the step-0 keys
of positions ``<= i`` (the committed text) plus the chain's own keys of steps ``1..k``. Loss: cross
entropy against the target's next-token distribution at ``i + k + 1`` restricted to the draft
vocabulary (soft labels from the stored final-norm states; one-hot greedy tokens for rows without
them), response positions only, weighted ``0.8**k``.

    python -m graft_sglang.eagle3.train --minutes 15     # resumable (checkpoint in the cache)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from graft_sglang.eagle3.data import FEATURE_LAYERS, default_data_dir
from graft_sglang.eagle3.export import WEIGHTS_DIR, save_head
from graft_sglang.eagle3.head import Eagle3Head, HeadConfig

STEP_DECAY = 0.8


@dataclass
class Batch:
    """tokens [B, L] int64; features [B, L, 3H]; lengths [B]; prompt_lens [B]; final [B, L, H]
    the target's final-norm states (its logits are ``lm_head(final)``), or None (hard labels)."""

    tokens: torch.Tensor
    features: torch.Tensor
    lengths: torch.Tensor
    prompt_lens: torch.Tensor
    final: torch.Tensor | None = None


def load_rows(data_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(data_dir.glob("shard_*.pt")):
        rows.extend(torch.load(path)["rows"])
    if not rows:
        raise FileNotFoundError(f"no shard_*.pt in {data_dir}: run graft_sglang.eagle3.data")
    return rows


def collate(rows: list[dict]) -> Batch:
    lengths = torch.tensor([len(r["tokens"]) for r in rows])
    width = int(lengths.max())
    feat_dim = rows[0]["features"].shape[1] * rows[0]["features"].shape[2]
    tokens = torch.zeros(len(rows), width, dtype=torch.int64)
    features = torch.zeros(len(rows), width, feat_dim)
    soft = all("final" in r for r in rows)
    final = torch.zeros(len(rows), width, rows[0]["features"].shape[2]) if soft else None
    for b, r in enumerate(rows):
        tokens[b, : lengths[b]] = r["tokens"].long()
        features[b, : lengths[b]] = r["features"].float().flatten(1)
        if final is not None:
            final[b, : lengths[b]] = r["final"].float()
    return Batch(tokens, features, lengths, torch.tensor([r["prompt_len"] for r in rows]), final)


def most_frequent_tokens(rows: list[dict], size: int, vocab_size: int) -> torch.Tensor:
    """The ``size`` most frequent response tokens, topped up with the lowest ids (BPE ids are
    roughly in merge order, i.e. frequent first). Returns sorted target ids [size]."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for r in rows:
        counts += torch.bincount(r["tokens"][r["prompt_len"]:].long(), minlength=vocab_size)
    # The tiny tie-break prefers low ids among equal counts (the top-up).
    key = counts.double() + 0.5 / (1 + torch.arange(vocab_size, dtype=torch.float64))
    return key.topk(size).indices.sort().values


def ttt_loss(head: Eagle3Head, batch: Batch, steps: int,
             target_to_draft: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Weighted TTT loss and the per-step top-1 agreement with the target's greedy tokens.

    target_to_draft: [V] int64, draft id of each target id or -1. Step 0 runs on every position
    (its keys are the committed context of all chains); later steps only on the chains that
    reach a response label within ``steps`` steps, which skips most prompt positions.
    """
    c = head.config
    bsz, width = batch.tokens.shape
    heads, d = c.num_attention_heads, c.head_dim
    idx = torch.arange(width)
    key_ok = idx[None, :] < batch.lengths[:, None]  # [B, L]
    causal = (idx[None, :] <= idx[:, None])[None] & key_ok[:, None, :]  # [B, L(q), L(k)]
    chains = (key_ok & (idx[None, :] >= batch.prompt_lens[:, None] - steps - 1)).flatten()
    keys: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: k, v [B, L, heads, d]
    rows_now = torch.arange(bsz * width)  # the rows of the current step

    def dense(x: torch.Tensor) -> torch.Tensor:
        """[rows, h, d] -> [B, L, heads, d], zero outside the current rows."""
        x = x.repeat_interleave(heads // x.shape[1], dim=1)
        return x.new_zeros(bsz * width, heads, d).index_copy(0, rows_now, x).view(
            bsz, width, heads, d)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = dense(q)
        keys.append((dense(k), dense(v)))
        k0, v0 = keys[0]
        scale = d ** -0.5
        s0 = torch.einsum("bihd,bjhd->bhij", q, k0) * scale
        s0 = s0.masked_fill(~causal[:, None], float("-inf"))
        diag = [(q * ks).sum(-1).transpose(1, 2)[..., None] * scale for ks, _ in keys[1:]]
        w = torch.cat([s0, *diag], dim=-1).softmax(-1)  # [B, heads, L, L + k]
        out = torch.einsum("bhij,bjhd->bihd", w[..., :width], v0)
        for s, (_, vs) in enumerate(keys[1:]):
            out = out + w[..., width + s].transpose(1, 2)[..., None] * vs
        return out.reshape(bsz * width, heads, d)[rows_now]

    hidden = batch.features.flatten(0, 1)
    total = torch.zeros(())
    accuracy = []
    for k in range(steps):
        if k == 1:
            rows_now = chains.nonzero().squeeze(1)
            hidden = hidden[rows_now]
        fed = idx + k + 1
        label_pos = fed + 1
        tokens_in = batch.tokens.gather(1, fed.clamp(max=width - 1).expand(bsz, -1)).flatten()
        labels = batch.tokens.gather(1, label_pos.clamp(max=width - 1).expand(bsz, -1))
        in_response = ((label_pos[None] < batch.lengths[:, None]) & (
            label_pos[None] >= batch.prompt_lens[:, None])).flatten()[rows_now]
        draft_labels = target_to_draft[labels].flatten()[rows_now]
        positions = (idx + k).expand(bsz, -1).flatten()
        hidden = head.step(hidden, tokens_in[rows_now], positions[rows_now], attend)
        if batch.final is None:  # one-hot labels; those outside the draft vocabulary are skipped
            valid = in_response & (draft_labels >= 0)
            target = draft_labels[valid]
        else:  # the target's distribution where it predicted the label, over the draft vocab
            valid = in_response
            fed_rows = (torch.arange(bsz)[:, None] * width + fed.clamp(max=width - 1)).flatten()
            final = batch.final.flatten(0, 1)[fed_rows[rows_now][valid]]
            target = torch.nn.functional.linear(final, head.lm_head.weight.detach()).softmax(-1)
        logits = head.logits(hidden[valid])
        total = total + STEP_DECAY ** k * torch.nn.functional.cross_entropy(logits, target)
        # Labels outside the draft vocabulary count as misses.
        hits = int((logits.argmax(-1) == draft_labels[valid]).sum())
        accuracy.append(hits / max(1, int(in_response.sum())))
    return total, accuracy


def new_head(target: torch.nn.Module, rows: list[dict], config: HeadConfig) -> Eagle3Head:
    head = Eagle3Head(config, target.model.embed_tokens.weight)
    head.set_draft_vocab(most_frequent_tokens(rows, config.draft_vocab_size, config.vocab_size))
    head.init_from_target(target)
    with torch.no_grad():
        # Start as "the high feature layer, read out by the target's head" (a sane distribution
        # instead of large random logits): fc passes the last feature chunk, the residual
        # branches start at zero.
        h = config.hidden_size
        head.fc.weight.zero_()
        head.fc.weight[:, -h:] = torch.eye(h)
        head.midlayer.self_attn.o_proj.weight.zero_()
        head.midlayer.mlp.down_proj.weight.zero_()
    head.lm_head.weight.requires_grad_(False)  # the target's own output space, kept fixed
    return head


def target_to_draft_map(head: Eagle3Head) -> torch.Tensor:
    """[V] int64: draft id of each target id, -1 outside the draft vocabulary."""
    table = torch.full((head.config.vocab_size,), -1, dtype=torch.int64)
    table[head.draft_to_target] = torch.arange(head.config.draft_vocab_size)
    return table


def batches(rows: list[dict], tokens_per_batch: int, rng: random.Random) -> list[list[dict]]:
    """Length-sorted buckets of about ``tokens_per_batch`` padded tokens, in random order."""
    order = sorted(rows, key=lambda r: len(r["tokens"]))
    out, cur = [], []
    for r in order:
        if cur and (len(cur) + 1) * len(r["tokens"]) > tokens_per_batch:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def main(argv: list[str] | None = None) -> None:
    from graft_sglang.engine.model import cache_dir, load_model

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--ckpt", type=Path, default=cache_dir() / "eagle3" / "train.pt")
    parser.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    parser.add_argument("--ttt-steps", type=int, default=4)
    parser.add_argument("--draft-vocab", type=int, default=8192)
    parser.add_argument("--tokens-per-batch", type=int, default=2048)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--holdout", type=int, default=16, help="sequences kept for validation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--export", type=Path, default=WEIGHTS_DIR,
                        help="where the bf16 SGLang-format head goes after training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)

    rows = load_rows(args.data)
    held, train_rows = rows[: args.holdout], rows[args.holdout:]
    target = load_model().model
    head = new_head(target, train_rows, HeadConfig(
        draft_vocab_size=args.draft_vocab, intermediate_size=args.intermediate_size))
    del target
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    state = {"step": 0, "seconds": 0.0, "curve": []}
    if args.ckpt.exists():
        saved = torch.load(args.ckpt)
        head.load_state_dict(saved["head"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        print(f"[train] resumed at step {state['step']}", file=sys.stderr)
    t2d = target_to_draft_map(head)
    epoch_batches = batches(train_rows, args.tokens_per_batch, rng)
    val_batch = collate(held)
    est_steps = max(1, int(args.minutes * 60 / 10.0))  # cosine horizon; refined below
    warmup = 30
    budget = args.minutes * 60
    t_start = time.time() - state["seconds"]
    while time.time() - t_start < budget:
        batch_rows = epoch_batches[state["step"] % len(epoch_batches)]
        step = state["step"]
        if step == 5:  # measured step time sets the schedule's horizon
            est_steps = int(budget / ((time.time() - t_start) / 5))
            state["horizon"] = est_steps
        horizon = state.get("horizon", est_steps)
        lr = args.lr * min(1.0, (step + 1) / warmup) * max(
            0.05, 0.5 * (1 + math.cos(math.pi * min(1.0, step / horizon))))
        for group in opt.param_groups:
            group["lr"] = lr
        loss, _ = ttt_loss(head, collate(batch_rows), args.ttt_steps, t2d)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] += 1
        state["seconds"] = time.time() - t_start
        if state["step"] % 25 == 0:
            with torch.no_grad():
                val_loss, val_acc = ttt_loss(head, val_batch, args.ttt_steps, t2d)
            point = {"step": state["step"], "seconds": round(state["seconds"]),
                     "train_loss": round(loss.item(), 4), "val_loss": round(float(val_loss), 4),
                     "val_acc": [round(a, 3) for a in val_acc]}
            state["curve"].append(point)
            print(f"[train] {json.dumps(point)}", file=sys.stderr, flush=True)
            torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "state": state,
                        "config": head.config.to_dict()}, args.ckpt)
    torch.save({"head": head.state_dict(), "opt": opt.state_dict(), "state": state,
                "config": head.config.to_dict()}, args.ckpt)
    save_head(head, FEATURE_LAYERS, args.export)
    (args.export / "training.json").write_text(json.dumps(
        {"sequences": len(train_rows), "heldout_sequences": len(held),
         "response_tokens": sum(len(r["tokens"]) - r["prompt_len"] for r in train_rows),
         "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)}, **state},
        indent=1) + "\n")
    print(f"[train] done: {state['step']} steps, {state['seconds']:.0f} s; exported to "
          f"{args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
