"""Shared fixtures: a tiny target model and its plain greedy outputs."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import greedy_references, tiny_llama


@pytest.fixture(scope="module")
def target() -> torch.nn.Module:
    torch.set_num_threads(1)
    return tiny_llama(0)


@pytest.fixture(scope="module")
def references(target: torch.nn.Module) -> dict[int, list[int]]:
    return greedy_references(target)
