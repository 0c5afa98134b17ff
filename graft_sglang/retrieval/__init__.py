"""Retrieval sources for Graft: text already seen, proposed as small tries of continuations.

``suffix.SuffixRetriever`` (per-request + per-tenant shared suffix matching, the default;
``native.NativeSuffixRetriever`` is its compiled twin, ``native.suffix_retriever`` picks the
one that builds) and ``successor.SuccessorTable`` (the paper's device-resident next-token
table).
"""

from graft_sglang.retrieval.base import Continuations, RetrievalSource

__all__ = ["Continuations", "RetrievalSource"]
