"""The serving step as it was at commit 956efe1 (the issue's "today's path"), timed on inputs
``bench.step_overhead`` recorded: run as a script with that commit's package first on the path,

    PYTHONPATH=<git archive of 956efe1> python bench/step_overhead_baseline.py IN.pt OUT.pt

``IN.pt``: {"budget", "topk", "corpus": [[int]], "prompts": {rid: [int]}, "steps": [{"roots",
"seq_lens", "candidates": (parent_list, scores, tokens), "commits": {rid: [int]}}]}. Each step
runs that commit's ``plugin.verify_input.step_tree`` (``GraftProposer``: host-side anchors,
a Python ``propose`` per query, ``pack_retrieved``, the PyTorch reference builder), then its
QLEN_ONLY ``tree_mask`` written into a buffer. ``OUT.pt``: {"seconds": [per step], "trees":
[(tokens, parents, source)]} so the caller checks that the old path built the same trees.
Imports only names that existed at that commit.
"""

from __future__ import annotations

import sys
import time

import torch

from graft_sglang.plugin import verify_input  # that commit's: it imports GraftProposer
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.tree.layout import TreeMaskMode, tree_mask


def main(inputs: str, output: str) -> None:
    torch.set_num_threads(1)
    data = torch.load(inputs)
    settings = GraftSettings()
    n = data["budget"]
    retriever = SuffixRetriever(settings.suffix_config())
    for doc in data["corpus"]:
        retriever.add_corpus(doc)
    for rid, prompt in data["prompts"].items():
        retriever.start_request(rid, prompt)
    proposer = verify_input.GraftProposer(settings.graft_config(n), retriever,
                                          settings.retrieval_plan(n))
    rids = list(data["prompts"])
    buffer = torch.zeros(len(rids) * n * n, dtype=torch.bool)
    seconds, trees = [], []
    for step in data["steps"]:
        t0 = time.perf_counter()
        tree = verify_input.step_tree(proposer, rids, step["roots"], step["seq_lens"],
                                      *step["candidates"], data["topk"])
        mask = tree_mask(tree.layout.ancestors, step["seq_lens"], TreeMaskMode.QLEN_ONLY)
        verify_input.write_mask(mask, buffer)
        seconds.append(time.perf_counter() - t0)
        trees.append((tree.tokens, tree.parents, tree.source))
        for rid, tokens in step["commits"].items():
            retriever.extend_request(rid, tokens)
    torch.save({"seconds": seconds, "trees": trees}, output)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
