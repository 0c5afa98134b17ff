"""``murmur_hash32_cpu``: the counter-based hash behind SGLang's seeded sampling
(``multinomial_with_seed``), the CPU twin of its Triton ``murmur_hash32_kernel``.

MurmurHash3 (x86, 32 bit) of four 4-byte blocks: seed low word, seed high word, position, column.
Arithmetic modulo 2^32 is done in int64 with every product split so that it stays below 2^63.
"""

from __future__ import annotations

import torch

from ._registry import register, register_fake

_MASK = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2^32`` for ``x`` in [0, 2^32) (int64), without int64 overflow."""
    low = x * (constant & 0xFFFF)
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _mix(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = _mul32(_rotl32(_mul32(k, 0xCC9E2D51), 15), 0x1B873593)
    h = _rotl32(h ^ k, 13)
    return (_mul32(h, 5) + 0xE6546B64) & _MASK


def _finalize(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: torch.Tensor) -> torch.Tensor:
    """The 64 bits of ``x`` as int64 (uint64 reinterpreted, other integer types widened)."""
    return x.view(torch.int64) if x.dtype == torch.uint64 else x.to(torch.int64)


def murmur_hash32(
    seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor
) -> torch.Tensor:
    """[n, m] uint32 hashes of (``seed[i]``, ``positions[i]`` mod 2^32, ``col_indices[j]`` mod
    2^32). seed, positions: [n]; col_indices: [m]. Cost O(n * m)."""
    words = _words(seed).unsqueeze(1)
    h = torch.zeros_like(words)
    h = _mix(h, words & _MASK)
    h = _mix(h, (words >> 32) & _MASK)
    h = _mix(h, _words(positions).unsqueeze(1) & _MASK)
    h = _mix(h, _words(col_indices).unsqueeze(0) & _MASK)
    return _finalize(h ^ 16).to(torch.uint32)


def _murmur_hash32_fake(
    seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor
) -> torch.Tensor:
    return seed.new_empty((seed.shape[0], col_indices.shape[0]), dtype=torch.uint32)


register("murmur_hash32_cpu(Tensor seed, Tensor positions, Tensor col_indices) -> Tensor",
         murmur_hash32)
# SGLang calls it inside the torch.compile'd multinomial_with_seed.
register_fake("murmur_hash32_cpu", _murmur_hash32_fake)
