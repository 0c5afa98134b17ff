"""Graft tree construction: draft candidates + retrieved tries -> one verification tree."""

from graft_sglang.tree.builder import GraftConfig, GraftTree, NodeSource, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates, from_eagle_draft_loop
from graft_sglang.tree.layout import TreeLayout, TreeMaskMode, tree_layout, tree_mask
from graft_sglang.tree.retrieved import RetrievedCandidates, pack_retrieved

__all__ = [
    "DraftCandidates", "GraftConfig", "GraftTree", "NodeSource", "RetrievedCandidates",
    "TreeLayout", "TreeMaskMode", "build_graft_tree", "from_eagle_draft_loop", "pack_retrieved",
    "tree_layout", "tree_mask",
]
