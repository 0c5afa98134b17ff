"""Retrieval sources for Graft: text already seen, proposed as small tries of continuations."""

from graft_sglang.retrieval.base import Continuations, RetrievalSource

__all__ = ["Continuations", "RetrievalSource"]
