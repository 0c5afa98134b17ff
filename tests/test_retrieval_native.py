"""The native suffix retriever against the Python one (the oracle): the same proposals, packed
steps and bookkeeping over long random streams with eviction, tenants, corpus add / remove and
draft anchors; the same errors; the fallback when it cannot be built."""

from __future__ import annotations

import logging
import random
import shutil
from array import array
from pathlib import Path
from types import ModuleType

import pytest
import torch

from graft_sglang.retrieval import native
from graft_sglang.retrieval.native import (
    NativeSuffixRetriever,
    NativeUnavailable,
    build_extension,
    load_native,
    suffix_retriever,
)
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever
from tests.random_inputs import eagle_draft

VOCAB = 12


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    """Build the extension; skip only where there is no C++ compiler at all."""
    try:
        load_native()
    except NativeUnavailable:
        if shutil.which("c++") is None and shutil.which("g++") is None:
            pytest.skip("no C++ compiler: the native retriever cannot be built here")
        raise


class Twins:
    """The Python and the native retriever, driven alike and compared after every call."""

    def __init__(self, config: SuffixConfig, extension: ModuleType | None = None) -> None:
        self.py = SuffixRetriever(config)
        self.nat = NativeSuffixRetriever(config, extension)
        self.handles: list[int] = []

    def both(self, method: str, *args, check: bool = True, **kwargs):
        """``method`` on both; ``check``: compare their state afterwards (which waits for the
        native one's queued corpus changes: without it, several can be pending at once)."""
        results = []
        for r in (self.py, self.nat):
            try:
                results.append(("ok", getattr(r, method)(*args, **kwargs)))
            except (ValueError, TypeError) as exc:
                results.append((type(exc), None))
        assert results[0][0] == results[1][0], (method, args, results)
        if check:
            self.check_state()
        return results[0][1], results[1][1]

    def set_finished_to_corpus(self, value: bool) -> None:
        self.py.finished_to_corpus = self.nat.finished_to_corpus = value

    def check_state(self) -> None:
        py, nat = self.py, self.nat._native
        assert self.py.live_requests == self.nat.live_requests
        assert (len(py.shared), len(py._documents), len(py._corpora), py.shared.num_keys) == (
            nat.shared_size, nat.num_documents, nat.num_corpora, nat.shared_keys)
        assert py.tenants._ids == self.nat.tenants._ids
        assert py.tenants._refs == self.nat.tenants._refs


def assert_same_packed(a, b) -> None:
    for name in ("tokens", "parents", "anchors", "path_probs", "valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def random_text(rng: random.Random, library: list[list[int]], n: int) -> list[int]:
    """Text that mixes copies of library passages (long matches) with noise (short ones)."""
    out: list[int] = []
    while len(out) < n:
        if rng.random() < 0.6:
            doc = rng.choice(library)
            i = rng.randrange(len(doc))
            out.extend(doc[i : i + rng.randrange(1, 24)])
        else:
            out.extend(rng.randrange(VOCAB) for _ in range(rng.randrange(1, 6)))
    return out[:n]


CONFIGS = [
    SuffixConfig(shared_capacity=60, request_capacity=24, max_match=6, max_depth=4,
                 max_occurrences=3),
    SuffixConfig(shared_capacity=300, request_capacity=64, max_match=16, max_depth=16,
                 max_occurrences=16, min_match=2, own_weight=3.0, confidence_scale=2.5),
    SuffixConfig(shared_capacity=1 << 20, request_capacity=1 << 16),
    SuffixConfig(shared_capacity=5, request_capacity=4, max_match=4, max_occurrences=1),
]


@pytest.mark.parametrize("seed", range(8))
def test_native_equals_python_on_long_random_streams(seed: int) -> None:
    drive(Twins(CONFIGS[seed % len(CONFIGS)]), seed)


def test_native_survives_hash_collisions() -> None:
    """A build whose hash keeps 6 bits: every lookup probes past other keys' entries (other
    namespaces' too), and deletions shift long probe runs."""
    extension = build_extension("graft_suffix_index_collisions",
                                ["GRAFT_SUFFIX_HASH_MASK=0x3fu"])
    for seed in range(2):
        drive(Twins(CONFIGS[seed], extension), 100 + seed)


def drive(twins: Twins, seed: int) -> None:
    """A long random stream of calls on both retrievers, compared after every call."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    library = [[rng.randrange(VOCAB) for _ in range(40)] for _ in range(4)]
    tenants = [None, ("lora", None), ("lora", "salt"), (None, "salt")]
    live: list[str] = []
    n_packed = n_proposed = 0
    for step in range(700):
        op = rng.random()
        if op < 0.08 or not live:
            rid = f"r{step}"
            prompt = random_text(rng, library, rng.randrange(0, 80))
            twins.both("start_request", rid, prompt, tenant=rng.choice(tenants))
            live.append(rid)
        elif op < 0.30:
            twins.both("extend_request", rng.choice(live),
                       random_text(rng, library, rng.randrange(1, 6)))
        elif op < 0.36:
            rid = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.2:
                twins.set_finished_to_corpus(rng.random() < 0.5)
            twins.both("finish_request", rid)
        elif op < 0.44:
            for _ in range(rng.choice([1, 1, 1, 4])):  # a burst: changes queued at once
                handle, other = twins.both(
                    "add_corpus", array("q", random_text(rng, library, rng.randrange(0, 60))),
                    tenant=rng.choice(tenants), check=False)
                assert handle == other
                twins.handles.append(handle)
                if twins.handles and rng.random() < 0.3:
                    twins.both("remove_corpus", rng.choice(twins.handles), check=False)
            twins.check_state()
        elif op < 0.48 and twins.handles:
            twins.both("remove_corpus", rng.choice(twins.handles))
        elif op < 0.80:
            suffix = (random_text(rng, library, rng.randrange(0, 5)) if rng.random() < 0.7
                      else [rng.randrange(VOCAB) for _ in range(rng.randrange(0, 3))])
            a, b = twins.both("propose", rng.choice(live), suffix, rng.randrange(0, 20))
            assert a == b  # tokens, parents and probabilities, bit for bit
            n_proposed += len(a) > 0
        else:
            rids = rng.sample(live, rng.randrange(1, len(live) + 1))
            topk, depth = rng.choice([(1, 1), (2, 3), (3, 4)])
            draft = eagle_draft(gen, len(rids), topk, depth, VOCAB)
            m, width = draft.num_candidates, rng.randrange(0, 4)
            anchors = torch.tensor([[rng.randrange(-1, m) for _ in range(width)]
                                    for _ in rids], dtype=torch.int64).reshape(len(rids), width)
            args = (rids, anchors, draft.tokens, draft.parents, rng.randrange(0, 12),
                    rng.randrange(0, 6), rng.randrange(0, 24))
            a, b = twins.both("retrieve_packed", *args)
            assert_same_packed(a, b)
            n_packed += bool(a.valid.any())
    assert n_proposed > 20 and n_packed > 10  # the streams did exercise retrieval


def test_native_memory_is_bounded_by_the_capacities() -> None:
    """Index memory stops growing at the capacities: at most 124 bytes per token of capacity
    (header contract) plus the namespace runs and the tables' minimum, however much text
    (random: every key distinct, the worst case) went through."""
    cap, request_cap = 2000, 500
    r = NativeSuffixRetriever(SuffixConfig(shared_capacity=cap, request_capacity=request_cap))
    rng = random.Random(0)
    seen = []
    for i in range(60):
        r.add_corpus([rng.randrange(1 << 30) for _ in range(200)], tenant=i % 7)
        seen.append(r._native.shared_memory_bytes)
    runs_and_minimum = (cap // 201 + 2) * 16 + 3 * 16 * 8
    assert seen[-1] <= 124 * cap + runs_and_minimum
    assert seen[-1] == seen[30] > seen[0]  # flat once full
    r.start_request("a", [rng.randrange(1 << 30) for _ in range(10 * request_cap)])
    assert r._native.request_memory_bytes <= 124 * request_cap + 16 + 3 * 16 * 8


def test_native_errors_match_python() -> None:
    twins = Twins(SuffixConfig())
    twins.both("start_request", "a", [1, 2, 3, 1, 2])
    for method, args in [
        ("start_request", ("a", [1])),  # already started
        ("start_request", ("b", [1, -1])),
        ("start_request", ("b", [1], ["unhashable"])),
        ("extend_request", ("a", [-5])),
        ("extend_request", ("nope", [1])),
        ("propose", ("nope",)),
        ("propose", ("a", (), -1)),
        ("propose", ("a", (-1,))),
        ("add_corpus", ([3, -1],)),
        ("remove_corpus", (7,)),
    ]:
        a, b = twins.both(method, *args)
        assert a is None and b is None, (method, args)
    empty = torch.zeros(1, 2, dtype=torch.int64)
    bad_parents = torch.tensor([[-1, 1]])
    for args in [
        (["a"], torch.tensor([[5]]), empty, empty, 4, 4, 8),  # anchor >= M
        (["a"], torch.tensor([[1]]), empty, bad_parents, 4, 4, 8),  # parents[1] = 1
        (["nope"], torch.zeros(1, 0, dtype=torch.int64), empty, empty, 4, 4, 0),
        (["a"], torch.zeros(1, 0, dtype=torch.int64), empty, empty, 4, 4, -1),
    ]:
        a, b = twins.both("retrieve_packed", *args)
        assert a is None and b is None, args
    twins.both("finish_request", "nope")  # a no-op for both
    with pytest.raises(ValueError, match="token ids < 2"):
        twins.nat.extend_request("a", [1 << 31])
    with pytest.raises(ValueError, match="shared_capacity must be <= 2"):
        NativeSuffixRetriever(SuffixConfig(shared_capacity=1 << 31))


def test_packed_output_lives_on_the_requested_device() -> None:
    r = NativeSuffixRetriever()
    r.start_request("a", [1, 2, 3, 1, 2])
    none = torch.zeros(1, 0, dtype=torch.int64)
    out = r.retrieve_packed(["a"], none, none, none, 4, 0, 4, device="meta")
    assert out.tokens.device.type == "meta" and out.valid.dtype == torch.bool
    host = r.retrieve_packed(["a"], none, none, none, 4, 0, 4)
    assert host.tokens.tolist() == [[3, 1, 2, 0]] and host.valid.tolist() == [[1, 1, 1, 0]]


def test_fallback_to_python_when_it_cannot_build(monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(native, "SOURCE", Path("/nonexistent/suffix_index.cpp"))
    monkeypatch.setattr(native, "_module", None)
    monkeypatch.setattr(native, "_failure", None)
    monkeypatch.setattr(native, "_warned", False)
    with pytest.raises(NativeUnavailable, match="source not found: /nonexistent"):
        load_native()
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        first, second = suffix_retriever(), suffix_retriever()
    assert type(first) is SuffixRetriever and type(second) is SuffixRetriever
    assert len([r for r in caplog.records if "unavailable" in r.message]) == 1


def test_factory_prefers_native() -> None:
    assert type(suffix_retriever(SuffixConfig(max_match=8))) is NativeSuffixRetriever
