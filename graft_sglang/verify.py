"""Reference tree verification, with the semantics of SGLang's verify kernels.

``verify_tree_greedy`` mirrors ``verify_tree_greedy`` (``tree.cuh``) and
``verify_tree_target_only`` mirrors ``tree_speculative_sampling_target_only`` (``sampling.cuh``)
with ``draft_probs = 0`` (retrieved nodes have no draft distribution; every node is a one-hot
proposal). Both are lossless for any tree without duplicate siblings:

* greedy: each accepted token equals the target's argmax after the accepted prefix;
* sampling: at each level one uniform ``u`` walks the siblings' target probabilities cumulatively
  (inverse-CDF sampling with the proposals ordered first); a sibling is accepted iff the sample
  falls on it, otherwise the next token is drawn from the target distribution with the proposed
  siblings removed. The emitted token therefore has exactly the target distribution.

Outputs (SGLang's contract): ``predicts [bs * N] int32`` (the emitted token at every accepted
node's flat index), ``accept_index [bs, S] int32`` (flat node ids of the accepted path, root first,
``-1`` padded), ``accept_length [bs] int32`` (accepted drafts, bonus excluded).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from graft_sglang.tree.layout import TreeLayout


@dataclass(frozen=True)
class VerifyResult:
    predicts: torch.Tensor  # [bs * N] int32
    accept_index: torch.Tensor  # [bs, S] int32
    accept_length: torch.Tensor  # [bs] int32, drafts only

    def accepted_tokens(self, b: int) -> list[int]:
        """Tokens request ``b`` commits this step: accepted drafts plus the bonus token."""
        idx = self.accept_index[b, : int(self.accept_length[b]) + 1].tolist()
        return [int(self.predicts[i]) for i in idx]


def _check(tokens: torch.Tensor, layout: TreeLayout, max_depth: int) -> None:
    if tokens.dim() != 2 or tuple(layout.retrieve_index.shape) != tuple(tokens.shape):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and layout {tuple(layout.retrieve_index.shape)} "
            "must both be [bs, N]"
        )
    if max_depth < 1:
        raise ValueError(f"max_depth (accept width S) must be >= 1, got {max_depth}")


def verify_tree_greedy(
    tokens: torch.Tensor, layout: TreeLayout, target_predict: torch.Tensor, max_depth: int
) -> VerifyResult:
    """tokens [bs, N]; target_predict [bs, N] = target argmax at each node; S = max_depth."""
    _check(tokens, layout, max_depth)
    bs, n = tokens.shape
    cand = tokens.tolist()
    ridx = layout.retrieve_index.tolist()
    nxt = layout.retrieve_next_token.tolist()
    sib = layout.retrieve_next_sibling.tolist()
    tp = target_predict.reshape(-1).tolist()
    predicts = [0] * (bs * n)
    accept_index = [[-1] * max_depth for _ in range(bs)]
    accept_length = [0] * bs
    for b in range(bs):
        last = ridx[b][0]
        accept_index[b][0] = last
        cur, k = 0, 0
        for _ in range(1, max_depth):
            child = nxt[b][cur]
            while child != -1:
                if cand[b][child] == tp[last]:
                    predicts[last] = tp[last]
                    k += 1
                    last = ridx[b][child]
                    accept_index[b][k] = last
                    break
                child = sib[b][child]
            if child == -1:
                break
            cur = child
        accept_length[b] = k
        predicts[last] = tp[last]
    return VerifyResult(
        torch.tensor(predicts, dtype=torch.int32),
        torch.tensor(accept_index, dtype=torch.int32).reshape(bs, max_depth),
        torch.tensor(accept_length, dtype=torch.int32),
    )


def verify_tree_target_only(
    tokens: torch.Tensor,
    layout: TreeLayout,
    target_probs: torch.Tensor,
    uniform_samples: torch.Tensor,
    uniform_final: torch.Tensor,
    max_depth: int,
    threshold_single: float = 1.0,
    threshold_acc: float = 1.0,
) -> VerifyResult:
    """Target-only tree sampling.

    target_probs [bs, N, V] float32 (already temperature / top-k / top-p processed);
    uniform_samples [bs, N] (the coin used at node i is ``uniform_samples[b, i]``);
    uniform_final [bs] (the coin for the bonus / correction token). Thresholds < 1 trade exactness
    for acceptance exactly as SGLang's ``--speculative-accept-threshold-*`` do; 1.0 is lossless.
    """
    _check(tokens, layout, max_depth)
    if not (0.0 <= threshold_single <= 1.0 and 0.0 <= threshold_acc <= 1.0):
        raise ValueError("threshold_single and threshold_acc must be in [0, 1]")
    bs, n = tokens.shape
    vocab = target_probs.shape[-1]
    probs = target_probs.reshape(bs * n, vocab).float()
    thr_acc = max(threshold_acc, 1e-9)
    predicts = torch.zeros(bs * n, dtype=torch.int32)
    accept_index = torch.full((bs, max_depth), -1, dtype=torch.int32)
    accept_length = torch.zeros(bs, dtype=torch.int32)
    cand = tokens.tolist()
    ridx = layout.retrieve_index.tolist()
    nxt = layout.retrieve_next_token.tolist()
    sib = layout.retrieve_next_sibling.tolist()
    for b in range(bs):
        row = b * n  # flat row of the node whose distribution is being sampled
        coin = float(uniform_samples[b, 0])
        last = ridx[b][0]
        accept_index[b, 0] = last
        k, cur, acc = 0, 0, 0.0
        rejected: list[int] = []
        for _ in range(1, max_depth):
            child = nxt[b][cur]
            while child != -1:
                tok = cand[b][child]
                p = float(probs[row, tok])
                acc += p
                if p > 0.0 and (coin < acc / thr_acc or p >= threshold_single):
                    acc = 0.0
                    row = b * n + child
                    coin = float(uniform_samples[b, child])
                    predicts[last] = tok
                    k += 1
                    accept_index[b, k] = ridx[b][child]
                    last = ridx[b][child]
                    rejected = []
                    break
                rejected.append(tok)
                child = sib[b][child]
            if child == -1:
                break
            cur = child
        accept_length[b] = k
        residual = probs[row].clone()
        if k != max_depth - 1 and rejected:
            residual[rejected] = 0.0
        predicts[last] = _sample_from(residual, float(uniform_final[b]))
    return VerifyResult(predicts, accept_index, accept_length)


def _sample_from(weights: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample of unnormalised ``weights`` with uniform ``u`` (first cumsum > u*sum)."""
    cdf = torch.cumsum(weights.double(), dim=0)
    total = float(cdf[-1])
    if total <= 0.0:
        return int(weights.shape[0] - 1)
    hit = torch.nonzero(cdf > u * total)
    return int(hit[0]) if hit.numel() else int(torch.nonzero(weights > 0)[-1])


def target_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> torch.Tensor:
    """Sampling distribution of the target: softmax(logits / T) restricted to top-k / top-p.

    logits [..., V] -> probs [..., V] float32. ``top_k = 0`` and ``top_p = 1`` disable those rules.
    """
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not (0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_k and top_k < probs.shape[-1]:
        kth = torch.topk(probs, top_k, dim=-1).values[..., -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p < 1.0:
        sorted_p, sorted_i = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p
        keep_sorted = before < top_p * sorted_p.sum(dim=-1, keepdim=True)
        keep = torch.zeros_like(keep_sorted).scatter(-1, sorted_i, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs / probs.sum(dim=-1, keepdim=True)
