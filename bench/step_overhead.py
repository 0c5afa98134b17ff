"""Benchmark: the host cost of one serving step's tree, this path against the old one (not a test).

For bs in {1, 16, 64} and N in {16, 32, 64}, with the plugin's default settings (graft mode:
a retrieved trie of N - 1 nodes below the root, one kept draft leaf with N / 4 more, the
suffix corpus holding four 2000-token documents), each request decodes through a real token
stream (Python stdlib sources tokenized with the embedded model's tokenizer, as in
``bench.tree_build``) from its own point with a 512-token prompt. Every step takes an EAGLE
draft loop's output in SGLang's layout (random draft distributions over the first 2048 ids;
the draft model's cost is not measured) and builds the verify tree and its QLEN_ONLY mask
twice, on the same inputs and retrieval state:

* step: the serving path (``plugin.verify_input.step_tree`` through ``step.GraftStep``):
  anchors on the device, one copy to the host, one ``NativeSuffixRetriever.retrieve_packed``,
  ``build_graft_tree_fast`` (the compiled build or the reference, whichever it picks for the
  shape) writing the mask into a preallocated verify buffer;
* reference: this code's slow path, Python ``SuffixRetriever`` (a ``propose`` per query,
  ``pack_retrieved``) and the PyTorch reference builder, the mask computed from the layout and
  copied into the buffer (anchors on the device);
* baseline: the path of commit 956efe1 (the issue's "today's path": host-side anchors, Python
  retrieval, that commit's reference builder), run on the same recorded inputs by
  ``bench/step_overhead_baseline.py`` from a ``git archive`` of that commit, in a subprocess
  of the same run.

All three must build the same trees (checked every step). Timed (medians per step, one thread):
``retrieval_ms`` (anchors, the copy, the retrieval call), ``build_ms`` (tree + mask) and
``total_ms`` (with the draft-loop conversion and the stage quotas); counted once per shape on
inputs standing in for device tensors (``tests/host_reads.py``): scalar host reads and
device-to-host copies of the serving step. ``radix_insert_ms`` is ``bench.radix_insert``'s
(kept from the existing file, else null). Writes ``bench/results/step_overhead.json``.

    python -m bench.step_overhead [--steps 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.tree_build import SHAPES, token_stream
from graft_sglang.plugin.settings import GraftSettings
from graft_sglang.plugin.verify_input import draft_candidates, step_tree, write_mask
from graft_sglang.plugin.worker import all_candidates
from graft_sglang.retrieval.native import NativeSuffixRetriever
from graft_sglang.retrieval.suffix import SuffixRetriever
from graft_sglang.step import GraftStep
from graft_sglang.tree.builder import GraftTree, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.layout import TreeMaskMode, tree_mask
from graft_sglang.tree.retrieved import RetrievedCandidates
from tests.host_reads import HostReads, OnDevice, on_device
from tests.random_inputs import eagle_loop_lists

PROMPT, DOCS, DOC_LEN = 512, 4, 2000
DRAFT_VOCAB = 2048
MODE = TreeMaskMode.QLEN_ONLY
OUT = Path("bench/results/step_overhead.json")
# (title, row key, width) of the printed table
COLUMNS = (("bs", "bs", 3), ("N", "budget", 3), ("reads", "host_reads_per_step", 6),
           ("copies", "d2h_copies_per_step", 7), ("retrieval", "retrieval_ms", 10),
           ("build", "build_ms", 8), ("total ms", "total_ms", 9),
           ("reference", "reference_total_ms", 10), ("baseline ms", "baseline_total_ms", 12),
           ("x", "speedup", 6))
BASELINE_COMMIT = "956efe1"


def host_traffic(step: GraftStep, rids: list[str], roots: torch.Tensor, seq_lens: torch.Tensor,
                 candidates: tuple[torch.Tensor, ...], topk: int,
                 buffer: torch.Tensor) -> tuple[int, int]:
    """(scalar host reads, device-to-host copies) of one serving step on ``OnDevice`` inputs."""
    OnDevice.to_host.clear()
    with HostReads() as host:
        step_tree(step, rids, on_device(roots), on_device(seq_lens),
                  *(on_device(t) for t in candidates), topk, mask_mode=MODE,
                  mask_out=on_device(buffer))
    copies = sum(name in ("cpu", "to", "tolist", "numpy") for name in OnDevice.to_host)
    return len(host.reads), copies


Build = Callable[[torch.Tensor, torch.Tensor, DraftCandidates, RetrievedCandidates,
                  torch.Tensor | None], GraftTree]


def timed_step(step: GraftStep, build: Build, rids: list[str], roots: torch.Tensor,
               seq_lens: torch.Tensor, candidates: tuple[torch.Tensor, ...],
               topk: int) -> tuple[GraftTree, tuple[float, float, float]]:
    """One step from the draft loop's output: the tree and the seconds of (retrieval, build,
    total)."""
    t0 = time.perf_counter()
    draft = draft_candidates(*candidates, topk)
    quotas = step.draft_quotas(draft, topk)
    t1 = time.perf_counter()
    retrieved = step.retrieve(rids, roots, draft, quotas)
    t2 = time.perf_counter()
    tree = build(roots, seq_lens, draft, retrieved, quotas)
    t3 = time.perf_counter()
    return tree, (t2 - t1, t3 - t2, t3 - t0)


def old_path(record: dict, tree_dir: Path | None) -> tuple[list[float], list] | None:
    """Seconds per step and trees of commit 956efe1's step on ``record`` (None without that
    commit's sources)."""
    if tree_dir is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        inputs, output = Path(tmp) / "in.pt", Path(tmp) / "out.pt"
        torch.save(record, inputs)
        env = {**os.environ, "PYTHONPATH": str(tree_dir)}
        # -P: not bench/ first on the path (transformers probes a package named "kernels")
        subprocess.run([sys.executable, "-P", str(Path(__file__).with_name(
            "step_overhead_baseline.py")), str(inputs), str(output)], env=env, check=True)
        out = torch.load(output)
    return out["seconds"], out["trees"]


def baseline_sources(commit: str, into: Path) -> Path | None:
    """``graft_sglang`` of ``commit`` extracted under ``into`` (None if git cannot)."""
    archive = subprocess.run(["git", "archive", commit, "graft_sglang"], capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def run(bs: int, n: int, steps: int, stream: list[int], tree_dir: Path | None = None) -> dict:
    topk, depth = SHAPES[n]
    settings = GraftSettings()
    recipe = settings.recipe(n)
    native = NativeSuffixRetriever(settings.suffix_config())
    python = SuffixRetriever(settings.suffix_config())
    step = GraftStep(recipe, native, check_inputs=False)
    baseline = GraftStep(recipe, python, check_inputs=False)
    gen = torch.Generator().manual_seed(n * 100 + bs)
    span = len(stream) - PROMPT - steps * 4
    pos = [PROMPT + (b * 997) % span for b in range(bs)]
    rids = [f"r{b}" for b in range(bs)]
    record: dict = {"budget": n, "topk": topk,
                    "corpus": [stream[d * DOC_LEN : (d + 1) * DOC_LEN] for d in range(DOCS)],
                    "prompts": {rid: stream[p - PROMPT : p] for rid, p in zip(rids, pos,
                                                                              strict=True)},
                    "steps": []}
    for retriever in (native, python):
        for doc in record["corpus"]:
            retriever.add_corpus(doc)
        for rid, prompt in record["prompts"].items():
            retriever.start_request(rid, prompt)
    buffers = [torch.zeros(bs * n * n, dtype=torch.bool) for _ in range(2)]

    def serving_build(*args: object) -> GraftTree:
        return step.tree(*args, mask_mode=MODE, mask_out=buffers[0])[0]

    def reference_build(roots: torch.Tensor, seq_lens: torch.Tensor, draft: DraftCandidates,
                        retrieved: RetrievedCandidates, quotas: torch.Tensor | None) -> GraftTree:
        tree = build_graft_tree(roots, seq_lens, draft, retrieved, baseline.config, quotas)
        write_mask(tree_mask(tree.layout.ancestors, seq_lens, MODE), buffers[1])
        return tree

    seconds: dict[str, list[tuple[float, float, float]]] = {"step": [], "reference": []}
    trees = []
    reads = copies = None
    for _ in range(steps):
        candidates = all_candidates(*eagle_loop_lists(gen, bs, topk, depth, DRAFT_VOCAB), n)
        roots = torch.tensor([stream[p - 1] for p in pos])
        seq_lens = torch.tensor(pos) - 1
        if reads is None:
            reads, copies = host_traffic(step, rids, roots, seq_lens, candidates, topk,
                                         buffers[0])
        tree, dt = timed_step(step, serving_build, rids, roots, seq_lens, candidates, topk)
        seconds["step"].append(dt)
        old, dt = timed_step(baseline, reference_build, rids, roots, seq_lens, candidates,
                             topk)
        seconds["reference"].append(dt)
        for name in ("tokens", "parents", "source"):
            if not torch.equal(getattr(tree, name), getattr(old, name)):
                raise AssertionError(f"the serving step and the reference differ in {name}")
        if not torch.equal(buffers[0], buffers[1]):
            raise AssertionError("the serving step and the reference write different masks")
        trees.append((tree.tokens, tree.parents, tree.source))
        commits = [stream[p : p + 1 + p % 4] for p in pos]
        record["steps"].append({"roots": roots, "seq_lens": seq_lens, "candidates": candidates,
                                "commits": dict(zip(rids, commits, strict=True))})
        for rid, c in zip(rids, commits, strict=True):
            native.extend_request(rid, c)
            python.extend_request(rid, c)
        pos = [p + len(c) for p, c in zip(pos, commits, strict=True)]

    def ms(path: str, part: int) -> float:
        return round(statistics.median(t[part] for t in seconds[path]) * 1e3, 3)

    baseline_ms = None
    old = old_path(record, tree_dir)
    if old is not None:
        for new, prior in zip(trees, old[1], strict=True):
            if not all(torch.equal(a, b) for a, b in zip(new, prior, strict=True)):
                raise AssertionError(f"commit {BASELINE_COMMIT}'s step built another tree")
        baseline_ms = round(statistics.median(old[0]) * 1e3, 3)
    return {"bs": bs, "budget": n, "host_reads_per_step": reads,
            "d2h_copies_per_step": copies, "retrieval_ms": ms("step", 0),
            "build_ms": ms("step", 1), "total_ms": ms("step", 2),
            "baseline_total_ms": baseline_ms,
            "reference_total_ms": ms("reference", 2),
            "reference_retrieval_ms": ms("reference", 0),
            "reference_build_ms": ms("reference", 1),
            "speedup": None if baseline_ms is None else round(baseline_ms / ms("step", 2), 2),
            "draft_candidates": topk + (depth - 1) * topk * topk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    torch.set_num_threads(1)
    stream = token_stream(DOCS * DOC_LEN + 20_000)
    run(1, 16, 2, stream)  # warm-up (and the native builds, once per machine)
    rows = []
    print(" ".join(f"{title:>{width}}" for title, _, width in COLUMNS))
    with tempfile.TemporaryDirectory() as tmp:
        tree_dir = baseline_sources(BASELINE_COMMIT, Path(tmp))
        if tree_dir is None:
            print(f"git cannot extract commit {BASELINE_COMMIT}: no baseline column")
        for bs, n in itertools.product((1, 16, 64), (16, 32, 64)):
            rows.append(run(bs, n, args.steps, stream, tree_dir))
            print(" ".join(f"{rows[-1][key]!s:>{width}}" for _, key, width in COLUMNS),
                  flush=True)
    radix = {"8k": None, "32k_chunked": None}
    if args.out.is_file():  # bench.radix_insert's figures, measured apart
        radix.update(json.loads(args.out.read_text()).get("radix_insert_ms") or {})
    meta = {"cpu": platform.processor() or platform.machine(), "threads": 1,
            "torch": torch.__version__, "steps": args.steps, "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2), "mask_mode": MODE.name,
            "plan": "GraftSettings defaults: root N - 1, 1 draft anchor of N / 4",
            "baseline": f"commit {BASELINE_COMMIT}'s plugin step_tree (GraftProposer: host "
                        "anchors, Python propose per query, pack_retrieved, reference builder) "
                        "+ tree_mask into a buffer, same inputs, subprocess",
            "reference": "this code's Python SuffixRetriever.retrieve_packed + reference "
                         "build_graft_tree + tree_mask copied into the buffer"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows, "radix_insert_ms": radix},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
