"""The compiled suffix retriever (``kernels/suffix_index.cpp``): same answers as ``suffix``.

``NativeSuffixRetriever`` is a drop-in for ``SuffixRetriever``: the same methods, tenants and
memory contract, the same proposals bit for bit (the Python implementation is its test oracle),
and ``retrieve_packed`` answers a whole step in one call, writing ``pack_retrieved``'s tensors
from C++ (one host buffer, one copy to ``device``). Tenant keys stay in Python (a
``TenantRegistry``); the C++ side sees namespace ids. Which documents the shared ring still
holds is arithmetic on their lengths, so the wrapper drops a document's tenant reference at the
call that evicts it, as ``suffix`` does, without asking the native side.

Build: JIT on first use with ``torch.utils.cpp_extension`` (a C++17 compiler and ninja, which
the venv has; pybind11 from torch's include directory; no torch headers), cached on disk under
``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``). Where it cannot be built
``load_native`` raises ``NativeUnavailable``; ``suffix_retriever`` then logs one line and
returns the Python one.

Corpus changes in the background: ``add_corpus``, ``remove_corpus`` and ``finish_request``
check their arguments, queue the change and return (O(len(tokens)) to copy the tokens, read in
place from an int64 buffer such as ``array('q')`` or a numpy array); one native thread indexes
the queue in order, and every call that reads the corpus first waits for it. The answers are
those of indexing each document at its call, while the caller's thread (SGLang's scheduler,
for the radix feed) goes on until its next retrieval call.

Costs: the O-bounds of ``suffix``; memory per index at most 124 bytes per token of capacity
(``kernels/suffix_index.h``). Deterministic: the same calls give the same answers on every
tensor-parallel rank. Differences from the Python one: token ids must be below 2^31 and
capacities at most 2^31 - 1 (ValueError otherwise).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable, Sequence
from types import ModuleType

import torch

from graft_sglang.retrieval.base import Continuations
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever
from graft_sglang.retrieval.tenants import TenantRegistry
from graft_sglang.tree.kernel import KERNEL_DIR
from graft_sglang.tree.retrieved import RetrievedCandidates

logger = logging.getLogger(__name__)
SOURCE = KERNEL_DIR / "suffix_index.cpp"
MAX_CAPACITY = (1 << 31) - 1
PACKED_BYTES_PER_SLOT = 3 * 8 + 4 + 1  # tokens, parents, anchors int64; probs f32; valid u8
_module: ModuleType | None = None
_failure: NativeUnavailable | None = None
_warned = False


class NativeUnavailable(RuntimeError):
    """The native suffix retriever cannot be built or loaded here."""


def load_native() -> ModuleType:
    """JIT-build (once per process, cached on disk) and return the extension module. Raises
    ``NativeUnavailable`` (again on every call, without retrying the build) if it fails."""
    global _module, _failure
    if _module is not None:
        return _module
    if _failure is not None:
        raise _failure
    try:
        _module = build_extension("graft_suffix_index")
    except NativeUnavailable as exc:
        _failure = exc
        raise
    return _module


def build_extension(name: str, defines: Sequence[str] = ()) -> ModuleType:
    """JIT-build the extension as module ``name`` with extra ``-D`` ``defines`` (tests build a
    variant with a narrowed hash, ``GRAFT_SUFFIX_HASH_MASK``, to force collisions). Raises
    ``NativeUnavailable``."""
    if not SOURCE.is_file():
        raise NativeUnavailable(f"native suffix retriever source not found: {SOURCE}")
    from torch.utils import cpp_extension

    try:
        return cpp_extension.load(
            name=name, sources=[str(SOURCE)], verbose=False,
            extra_cflags=["-O2", *(f"-D{d}" for d in defines)],
            extra_include_paths=[str(SOURCE.parent)])
    except (OSError, RuntimeError, ImportError) as exc:
        raise NativeUnavailable(
            f"building the native suffix retriever ({SOURCE}) failed: {exc}") from exc


def _host_int64(t: torch.Tensor) -> torch.Tensor:
    return t.to(device="cpu", dtype=torch.int64).contiguous()


class NativeSuffixRetriever:
    """``SuffixRetriever`` in C++ (see module docstring). ``extension``: the built module
    (default ``load_native()``, which raises ``NativeUnavailable`` where it cannot be built)."""

    def __init__(self, config: SuffixConfig | None = None,
                 extension: ModuleType | None = None) -> None:
        self.config = cfg = config or SuffixConfig()
        for name in ("shared_capacity", "request_capacity"):
            if getattr(cfg, name) > MAX_CAPACITY:
                raise ValueError(f"SuffixConfig.{name} must be <= 2^31 - 1 for the native "
                                 f"retriever, got {getattr(cfg, name)}")
        self._native = (extension or load_native()).Retriever(
            cfg.shared_capacity, cfg.request_capacity, cfg.min_match, cfg.max_match,
            cfg.max_depth, cfg.max_occurrences, cfg.own_weight, cfg.confidence_scale)
        self.tenants = TenantRegistry()
        self._live: dict[str, tuple[int, int]] = {}  # rid -> (tokens held, namespace)
        # The shared ring as the native side lays it out: its end, and every document, oldest
        # first, as (log position of its closing SEPARATOR, namespace, handle or -1).
        self._shared_end = 0
        self._documents: deque[tuple[int, int, int]] = deque()
        self._corpora: dict[int, int] = {}  # held add_corpus handle -> namespace

    @property
    def finished_to_corpus(self) -> bool:
        """``SuffixRetriever.finished_to_corpus``."""
        return self._native.finished_to_corpus

    @finished_to_corpus.setter
    def finished_to_corpus(self, value: bool) -> None:
        self._native.finished_to_corpus = bool(value)

    # -- RetrievalSource ----------------------------------------------------------------------
    def start_request(self, rid: str, prompt: Sequence[int], tenant: Hashable = None) -> None:
        if rid in self._live:
            raise ValueError(f"request {rid!r} already started")
        namespace = self.tenants.acquire(tenant)
        try:
            self._native.start_request(rid, prompt, namespace)
        except BaseException:
            self.tenants.release(namespace)
            raise
        self._live[rid] = (min(len(prompt), self.config.request_capacity), namespace)

    def extend_request(self, rid: str, tokens: Sequence[int]) -> None:
        self._native.extend_request(rid, tokens)
        held, namespace = self._live[rid]
        self._live[rid] = (min(held + len(tokens), self.config.request_capacity), namespace)

    def finish_request(self, rid: str) -> None:
        """Drop the request's state (a no-op for an unknown one); with ``finished_to_corpus``
        its text joins its tenant's shared corpus (indexed in the background)."""
        entry = self._live.pop(rid, None)
        if entry is None:
            return
        held, namespace = entry
        to_corpus = self.finished_to_corpus and held > 0
        self._native.finish_request(rid)
        if to_corpus:  # the request's reference passes to the document
            self._hold_document(held, namespace, -1)
        else:
            self.tenants.release(namespace)

    def propose(self, rid: str, suffix: Sequence[int] = (), max_nodes: int = 16) -> Continuations:
        return Continuations(*self._native.propose(rid, suffix, max_nodes))

    def retrieve_packed(
        self, rids: Sequence[str], anchors: torch.Tensor, draft_tokens: torch.Tensor,
        draft_parents: torch.Tensor, root_nodes: int, anchor_nodes: int, max_slots: int,
        device: torch.device | str = "cpu",
    ) -> RetrievedCandidates:
        """``PackedRetrievalSource.retrieve_packed``, in one native call. Cost O(bs * (A + 1))
        proposals plus O(bs * max_slots) packing; one host-to-device copy off the CPU."""
        bs, slots = len(rids), max(max_slots, 0)
        packed = torch.empty(bs * slots * PACKED_BYTES_PER_SLOT, dtype=torch.uint8)
        self._native.retrieve_packed(
            list(rids), _host_int64(anchors).numpy(), _host_int64(draft_tokens).numpy(),
            _host_int64(draft_parents).numpy(), root_nodes, anchor_nodes, max_slots,
            packed.numpy())
        packed = packed.to(device)
        cells = bs * slots
        ints = packed[: 24 * cells].view(torch.int64).view(3, bs, slots)
        probs = packed[24 * cells : 28 * cells].view(torch.float32).view(bs, slots)
        valid = packed[28 * cells :].view(torch.bool).view(bs, slots)
        return RetrievedCandidates(ints[0], ints[1], ints[2], probs, valid)

    # -- shared corpus --------------------------------------------------------------------------
    def add_corpus(self, tokens: Sequence[int], tenant: Hashable = None) -> int:
        """Add text to ``tenant``'s shared corpus (indexed in the background, see the module
        docstring); returns a handle for ``remove_corpus``."""
        namespace = self.tenants.acquire(tenant)
        try:
            handle = self._native.add_corpus(tokens, namespace)
        except BaseException:
            self.tenants.release(namespace)
            raise
        self._corpora[handle] = namespace
        self._hold_document(len(tokens), namespace, handle)
        return handle

    def remove_corpus(self, handle: int) -> None:
        """Forget text added by ``add_corpus``; a no-op if it was already evicted or removed
        (applied in the background, in order)."""
        self._native.remove_corpus(handle)
        namespace = self._corpora.pop(handle, None)
        if namespace is not None:
            self.tenants.release(namespace)

    def settle(self) -> None:
        """Wait until every queued corpus change is indexed (reading calls do it themselves)."""
        self._native.settle()

    def _hold_document(self, length: int, namespace: int, handle: int) -> None:
        """Mirror the native ring: a document of ``length`` tokens and its SEPARATOR at the
        end, then the documents it pushed out entirely, oldest first, drop their reference."""
        last = self._shared_end + length
        self._shared_end = last + 1
        self._documents.append((last, namespace, handle))
        start = self._shared_end - self.config.shared_capacity
        while self._documents and self._documents[0][0] <= start:
            _, namespace, handle = self._documents.popleft()
            if handle < 0 or self._corpora.pop(handle, None) is not None:  # not removed
                self.tenants.release(namespace)

    @property
    def live_requests(self) -> list[str]:
        return list(self._live)


def suffix_retriever(config: SuffixConfig | None = None) -> NativeSuffixRetriever | SuffixRetriever:
    """The native retriever where it builds, else the Python one (logged once per process)."""
    global _warned
    try:
        return NativeSuffixRetriever(config)
    except NativeUnavailable as exc:
        if not _warned:
            _warned = True
            logger.warning("native suffix retriever unavailable (%s); using the Python one", exc)
        return SuffixRetriever(config)
