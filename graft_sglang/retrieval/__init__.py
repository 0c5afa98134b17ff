"""Retrieval sources for Graft: text already seen, proposed as small tries of continuations.

``suffix.SuffixRetriever`` (per-request + shared suffix matching, the default) and
``successor.SuccessorTable`` (the paper's device-resident next-token table).
"""

from graft_sglang.retrieval.base import Continuations, RetrievalSource

__all__ = ["Continuations", "RetrievalSource"]
