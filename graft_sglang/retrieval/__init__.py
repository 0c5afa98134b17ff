"""Retrieval sources for Graft: text already seen, proposed as small tries of continuations."""

from graft_sglang.retrieval.base import Continuations, RetrievalSource
from graft_sglang.retrieval.successor import SuccessorTable
from graft_sglang.retrieval.suffix import SuffixConfig, SuffixRetriever

__all__ = ["Continuations", "RetrievalSource", "SuccessorTable", "SuffixConfig", "SuffixRetriever"]
