"""The speculative draft tree: EAGLE tree build, greedy tree verify, and the tree links
recovered from a QLEN-layout mask (NGRAM).

Semantics of sgl-kernel's CPU ``spec.cpp``. A tree of ``n = draft_token_num`` nodes per request
(node 0 the root, i.e. the last verified token; parents precede children) is described by
``retrive_index [bs, n]`` (flat row ``b * n + i``), ``retrive_next_token [bs, n]`` (first child,
-1 for none) and ``retrive_next_sibling [bs, n]`` (next child of the same parent, -1 for none).
"""

from __future__ import annotations

import torch

from ._registry import register

FULL_MASK, QLEN_ONLY = 0, 1


def _first_child(parents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[bs, n]: the smallest node whose parent (``parents [bs, n]``, where ``valid``) is this
    node, -1 for none. O(bs * n^2)."""
    n = parents.shape[1]
    nodes = torch.arange(n, device=parents.device)
    child = valid.unsqueeze(1) & (parents.unsqueeze(1) == nodes.view(1, n, 1))  # [b, p, c]
    first = torch.where(child, nodes, n).amin(dim=2)
    return torch.where(first < n, first, -1)


def _next_sibling(parents: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[bs, n]: the smallest later node with the same parent (both ``valid``), -1 for none.
    O(bs * n^2)."""
    n = parents.shape[1]
    nodes = torch.arange(n, device=parents.device)
    sibling = (  # [b, i, k]: k > i has i's parent
        valid.unsqueeze(1)
        & valid.unsqueeze(2)
        & (parents.unsqueeze(1) == parents.unsqueeze(2))
        & (nodes.view(1, 1, n) > nodes.view(1, n, 1))
    )
    first = torch.where(sibling, nodes, n).amin(dim=2)
    return torch.where(first < n, first, -1)


def build_tree_kernel_efficient(
    parent_list: torch.Tensor,
    selected_index: torch.Tensor,
    verified_seq_len: torch.Tensor,
    tree_mask: torch.Tensor,
    positions: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    topk: int,
    depth: int,
    draft_token_num: int,
    tree_mask_mode: int,
) -> None:
    """Build the verify tree of EAGLE's top-k draft.

    Node i >= 1 is draft candidate ``selected_index[b, i - 1]`` (an index into the flattened
    ``topk``-wide draft levels); its parent is the root when ``selected_index // topk == 0``,
    else the node whose candidate is ``parent_list[b, selected_index // topk]``. A node whose
    parent is not among the nodes is left out of the links and its mask walk stops there.

    parent_list: [bs, topk * (depth - 1) + 1] ([bs, 0] when depth == 1);
    selected_index: [bs, n - 1]; verified_seq_len: [bs].
    Writes positions [bs * n] (``verified_seq_len + depth of node``), retrive_index,
    retrive_next_token, retrive_next_sibling [bs, n], and tree_mask (bool; row = node, True =
    may attend: the root, itself and its ancestors):
    QLEN_ONLY (1): [bs * n * n], fully written;
    FULL_MASK (0): [(sum(verified_seq_len) + bs * n) * n], rows of ``seq_len + n`` columns per
    request; only the n tree columns are written (the caller fills the prefix columns).
    Raises ValueError for another tree_mask_mode or mismatched sizes. Cost O(bs * n^2).
    """
    if tree_mask_mode not in (FULL_MASK, QLEN_ONLY):
        raise ValueError(
            f"build_tree_kernel_efficient_cpu: tree_mask_mode must be FULL_MASK (0) or QLEN_ONLY "
            f"(1), got {tree_mask_mode}"
        )
    bs, n = parent_list.shape[0], draft_token_num
    device = parent_list.device
    if selected_index.shape != (bs, n - 1):
        raise ValueError(
            f"selected_index must be [{bs}, {n - 1}], got {tuple(selected_index.shape)}"
        )
    seq_lens = verified_seq_len.to(torch.int64)
    lens = seq_lens.tolist()
    mask_size = bs * n * n + (sum(lens) * n if tree_mask_mode == FULL_MASK else 0)
    if tree_mask.numel() != mask_size:
        mode_name = "FULL_MASK" if tree_mask_mode == FULL_MASK else "QLEN_ONLY"
        raise ValueError(
            f"{mode_name} tree_mask must have {mask_size} entries, got {tree_mask.numel()}"
        )
    selected = selected_index.to(torch.int64)
    parent_slot = selected // topk
    width = parent_list.shape[1]
    if width > 0:
        parent_candidate = parent_list.to(torch.int64).gather(1, parent_slot.clamp(0, width - 1))
        in_list = parent_slot < width
    else:
        parent_candidate = torch.full_like(selected, -1)
        in_list = torch.zeros_like(selected, dtype=torch.bool)
    # match[b, i, j]: node j + 1 holds node i + 1's parent candidate.
    match = selected.unsqueeze(1) == parent_candidate.unsqueeze(2)
    found = match.any(dim=2) & in_list
    at_root = parent_slot == 0
    parents = torch.full((bs, n), -1, dtype=torch.int64, device=device)
    parents[:, 1:] = torch.where(
        at_root, 0, torch.where(found, match.to(torch.int8).argmax(dim=2) + 1, -1)
    )
    valid = torch.zeros((bs, n), dtype=torch.bool, device=device)
    valid[:, 1:] = at_root | found

    # Walk every node up to the root, at most `depth` nodes, marking each one visited.
    mask = torch.zeros((bs, n, n), dtype=torch.bool, device=device)
    mask[:, :, 0] = True
    node_depth = torch.zeros((bs, n), dtype=torch.int64, device=device)
    current = torch.arange(n, device=device).expand(bs, n).clone()
    walking = current > 0
    for _ in range(depth):
        if not bool(walking.any()):
            break
        rows, nodes = walking.nonzero(as_tuple=True)
        mask[rows, nodes, current[rows, nodes]] = True
        node_depth += walking
        parent = parents.gather(1, current)
        walking = walking & (parent > 0)  # stop below the root or at a missing parent
        current = torch.where(walking, parent, current)

    positions.view(bs, n).copy_(seq_lens.unsqueeze(1) + node_depth)
    retrive_index.view(bs, n).copy_(torch.arange(bs * n, device=device).view(bs, n))
    retrive_next_token.view(bs, n).copy_(_first_child(parents, valid))
    retrive_next_sibling.view(bs, n).copy_(_next_sibling(parents, valid))

    if tree_mask_mode == QLEN_ONLY:
        tree_mask.view(bs, n, n).copy_(mask)
        return
    offset = 0
    for b, seq_len in enumerate(lens):
        rows_b = tree_mask[offset : offset + n * (seq_len + n)].view(n, seq_len + n)
        rows_b[:, seq_len:] = mask[b]
        offset += n * (seq_len + n)


def verify_tree_greedy(
    predicts: torch.Tensor,
    accept_index: torch.Tensor,
    accept_token_num: torch.Tensor,
    candidates: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    target_predict: torch.Tensor,
) -> None:
    """Greedy tree verify: from the root, repeatedly step to the first child (in sibling order)
    whose draft token equals the target's argmax at the current node, for at most
    ``num_spec_step - 1`` steps.

    candidates, retrive_*, target_predict: [bs, n]. Writes accept_index [bs, num_spec_step]
    (flat indices of the accepted path, root first; later slots keep the caller's -1),
    accept_token_num [bs] (accepted drafts, the bonus token excluded), and predicts [bs * n]
    (at every accepted node the target token that follows it; other entries untouched).
    A walk over each request's tree: a Python loop, O(bs * n), on small host lists.
    """
    bs = candidates.shape[0]
    num_spec_step = accept_index.shape[1]
    tokens = candidates.tolist()
    index = retrive_index.tolist()
    first_child = retrive_next_token.tolist()
    next_sibling = retrive_next_sibling.tolist()
    target = target_predict.reshape(-1).tolist()
    predict_at: list[int] = []
    accept_rows: list[int] = []
    accept_cols: list[int] = []
    accept_values: list[int] = []
    accepted_drafts: list[int] = []
    for b in range(bs):
        last = index[b][0]
        path = [last]
        node = 0
        for _ in range(1, num_spec_step):
            node = first_child[b][node]
            while node != -1 and tokens[b][node] != target[last]:
                node = next_sibling[b][node]
            if node == -1:
                break
            predict_at.append(last)
            last = index[b][node]
            path.append(last)
        predict_at.append(last)
        accept_rows += [b] * len(path)
        accept_cols += range(len(path))
        accept_values += path
        accepted_drafts.append(len(path) - 1)
    if bs == 0:
        return
    device = predicts.device
    predict_at_t = torch.tensor(predict_at, dtype=torch.int64, device=device)
    predicts[predict_at_t] = target_predict.reshape(-1)[predict_at_t].to(predicts.dtype)
    accept_index[
        torch.tensor(accept_rows, device=device), torch.tensor(accept_cols, device=device)
    ] = torch.tensor(accept_values, dtype=accept_index.dtype, device=device)
    accept_token_num.copy_(torch.tensor(accepted_drafts, device=device))


def reconstruct_indices_from_tree_mask(
    tree_mask: torch.Tensor,
    verified_seq_len: torch.Tensor,
    positions: torch.Tensor,
    retrive_index: torch.Tensor,
    retrive_next_token: torch.Tensor,
    retrive_next_sibling: torch.Tensor,
    batch_size: int,
    draft_token_num: int,
) -> None:
    """The tree links of a QLEN-layout mask (NGRAM's trees).

    tree_mask: [bs * n * n] bool, ``[b, i, j]`` True when node j is an ancestor of i (the
    diagonal is ignored). A node's parent is its nearest (largest-index) ancestor.
    Writes positions [bs * n] (``verified_seq_len + number of ancestors``), retrive_index,
    retrive_next_token (smallest descendant: the first child of a well-formed tree),
    retrive_next_sibling (next node with the same parent; -1 for the root) [bs, n].
    Cost O(bs * n^2).
    """
    bs, n = batch_size, draft_token_num
    if tree_mask.numel() != bs * n * n:
        raise ValueError(f"tree_mask must have batch_size * n * n = {bs * n * n} entries, "
                         f"got {tree_mask.numel()}")
    device = tree_mask.device
    nodes = torch.arange(n, device=device)
    ancestor = tree_mask.view(bs, n, n).to(torch.bool) & (nodes.view(1, 1, n) < nodes.view(1, n, 1))
    parents = torch.where(ancestor, nodes, -1).amax(dim=2)
    positions.view(bs, n).copy_(verified_seq_len.to(torch.int64).unsqueeze(1) + ancestor.sum(2))
    retrive_index.view(bs, n).copy_(torch.arange(bs * n, device=device).view(bs, n))
    descendant = torch.where(ancestor, nodes.view(1, n, 1), n).amin(dim=1)  # [b, t]
    retrive_next_token.view(bs, n).copy_(torch.where(descendant < n, descendant, -1))
    retrive_next_sibling.view(bs, n).copy_(_next_sibling(parents, parents >= 0))


register(
    "build_tree_kernel_efficient_cpu(Tensor parent_list, Tensor selected_index, "
    "Tensor verified_seq_len, Tensor(a!) tree_mask, Tensor(b!) positions, "
    "Tensor(c!) retrive_index, Tensor(d!) retrive_next_token, Tensor(e!) retrive_next_sibling, "
    "int topk, int depth, int draft_token_num, int tree_mask_mode) -> ()",
    build_tree_kernel_efficient,
)
register(
    "verify_tree_greedy_cpu(Tensor(a!) predicts, Tensor(b!) accept_index, "
    "Tensor(c!) accept_token_num, Tensor candidates, Tensor retrive_index, "
    "Tensor retrive_next_token, Tensor retrive_next_sibling, Tensor target_predict) -> ()",
    verify_tree_greedy,
)
register(
    "reconstruct_indices_from_tree_mask_cpu(Tensor tree_mask, Tensor verified_seq_len, "
    "Tensor(a!) positions, Tensor(b!) retrive_index, Tensor(c!) retrive_next_token, "
    "Tensor(d!) retrive_next_sibling, int batch_size, int draft_token_num) -> ()",
    reconstruct_indices_from_tree_mask,
)
