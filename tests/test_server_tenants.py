"""Tenant isolation of the radix-fed corpus in SGLang's real server on this CPU (one GRAFT
server on the embedded model, ended by pid): a request never drafts from text of another
``cache_salt``. Tenant A sends a prompt, then tenant B the same prompt under another salt: the
radix cache isolates B (no cached tokens) and so does the corpus (B drafts as A did the first
time, with nothing of A's answer to graft), while A's own repeat hits its cache and drafts from
its own answer (the positive control: what B would get through a leak)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from graft_sglang.server_process import ServerProcess
from tests.server_fixtures import COMMON_ARGS, TREE_ARGS, chat_ids, generate_ids, greedy, serve

pytestmark = pytest.mark.slow
GRAFT = ("--speculative-algorithm", "GRAFT", *TREE_ARGS, *COMMON_ARGS)
MAX_NEW = 48


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    yield from serve(GRAFT)


def under_salt(server: ServerProcess, ids: list[int], salt: str) -> dict[str, Any]:
    """A greedy answer to ``ids`` as tenant ``salt`` (SGLang's ``cache_salt``)."""
    return generate_ids(server, ids, greedy(MAX_NEW, ignore_eos=True), cache_salt=salt)


def test_a_salt_never_drafts_from_another_salts_text(server: ServerProcess) -> None:
    # a prompt no earlier request sent: no corpus holds any of it yet
    ids = chat_ids("Rename the variable x to total in this code and explain the change.\n"
                   f"def f_{uuid.uuid4().hex[:8]}(items):\n    x = 0\n    for i in items:\n"
                   "        x += i\n    return x\n")
    first = under_salt(server, ids, "tenant-a")
    other = under_salt(server, ids, "tenant-b")
    again = under_salt(server, ids, "tenant-a")
    assert other["output_ids"] == first["output_ids"] == again["output_ids"]  # lossless
    accept = {name: out["meta_info"]["spec_accept_length"]
              for name, out in (("first", first), ("other", other), ("again", again))}
    print(f"accept lengths: {accept}")
    assert other["meta_info"]["cached_tokens"] == 0, accept  # the radix cache isolates B
    assert again["meta_info"]["cached_tokens"] > 0, accept
    # B's trees are A's first ones: nothing of A's answer to graft from
    assert other["meta_info"]["spec_accept_length"] <= accept["first"] + 0.25, accept
    # A's repeat grafts its own answer (through a leak, B would have too)
    assert accept["again"] >= accept["first"] + 1.0, accept
