"""Tree layout and attention masks in SGLang's three layouts."""

from __future__ import annotations

import pytest
import torch

from graft_sglang.tree.layout import TreeMaskMode, ancestor_mask, tree_layout, tree_mask


def test_reference_example() -> None:
    """The worked example of the internals note §9 (nodes 4-6 a grafted chain under node 2)."""
    lay = tree_layout(torch.tensor([[-1, 0, 0, 1, 2, 4, 5, 0]]), torch.tensor([10]))
    assert lay.positions.tolist() == [[10, 11, 11, 12, 12, 13, 14, 11]]
    assert lay.retrieve_next_token.tolist() == [[1, 3, 4, -1, 5, 6, -1, -1]]
    assert lay.retrieve_next_sibling.tolist() == [[-1, 2, 7, -1, -1, -1, -1, -1]]
    assert lay.depth.tolist() == [[0, 1, 1, 2, 2, 3, 4, 1]]


def test_ancestor_mask_deep_chain() -> None:
    """Pointer doubling must reach the root of a chain as deep as the tree is wide."""
    n = 37
    anc = ancestor_mask(torch.arange(-1, n - 1).unsqueeze(0))
    assert torch.equal(anc[0], torch.tril(torch.ones(n, n, dtype=torch.bool)))


def _random_parents(gen: torch.Generator, bs: int, n: int) -> torch.Tensor:
    rows = [[-1] + [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
            for _ in range(bs)]
    return torch.tensor(rows)


@pytest.mark.parametrize("n", [2, 5, 8, 9, 16, 17, 32])
def test_mask_modes(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    bs = 3
    parents = _random_parents(gen, bs, n)
    seq_lens = torch.tensor([0, 4, 11])
    anc = tree_layout(parents, seq_lens).ancestors
    full = tree_mask(anc, seq_lens, TreeMaskMode.FULL_MASK)
    assert full.dtype == torch.bool
    assert full.numel() == int(seq_lens.sum()) * n + bs * n * n
    offset = 0
    for b in range(bs):
        length = int(seq_lens[b])
        block = full[offset : offset + n * (length + n)].view(n, length + n)
        assert block[:, :length].all()
        assert torch.equal(block[:, length:], anc[b])
        offset += n * (length + n)
    qlen = tree_mask(anc, seq_lens, TreeMaskMode.QLEN_ONLY)
    assert torch.equal(qlen.view(bs, n, n), anc)
    packed = tree_mask(anc, seq_lens, TreeMaskMode.QLEN_ONLY_BITPACKING)
    width = 4 if n > 16 else (2 if n > 8 else 1)
    assert packed.dtype == torch.uint8 and packed.numel() == bs * n * width
    rows = packed.view(bs, n, width).to(torch.int64)
    value = sum(rows[..., w] << (8 * w) for w in range(width))
    unpacked = (value.unsqueeze(-1) >> torch.arange(n)) & 1
    assert torch.equal(unpacked.bool(), anc)


@pytest.mark.parametrize("n", [2, 9, 17, 32])
def test_truncated_layout_equals_the_layout_of_the_prefix(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    parents = _random_parents(gen, 3, n)
    seq_lens = torch.tensor([0, 4, 11])
    full = tree_layout(parents, seq_lens)
    for m in range(1, n + 1):
        cut, ref = full.truncated(m), tree_layout(parents[:, :m], seq_lens)
        for name in ref.__dataclass_fields__:
            assert torch.equal(getattr(cut, name), getattr(ref, name)), (m, name)


def test_bitpacking_limit() -> None:
    anc = torch.ones(1, 33, 33, dtype=torch.bool)
    with pytest.raises(ValueError, match="N <= 32"):
        tree_mask(anc, torch.tensor([0]), TreeMaskMode.QLEN_ONLY_BITPACKING)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="parents"):
        tree_layout(torch.tensor([-1, 0]), torch.tensor([1]))
    with pytest.raises(ValueError, match="seq_lens"):
        tree_layout(torch.tensor([[-1, 0]]), torch.tensor([1, 2]))
