"""Latency of the compiled Graft tree build vs the PyTorch reference (not a test).

On a GPU (default ``--device cuda``): CUDA-event timing, warm-up, median of ``--iters`` runs,
for bs in {1, 4, 16, 64} and N in {16, 32, 64, 128}; writes
``bench/results/kernels-<gpu name>.json``. ``--device cpu`` records the same table on the CPU
(the g++ build of the same kernel source). Without a GPU and without ``--device cpu`` it exits
with a message. ``--mask-mode`` adds SGLang's attention mask to both sides (kernel: same launch;
reference: ``tree_mask``).

    python -m bench.kernels [--device cuda|cpu] [--iters 50] [--mask-mode none|full|qlen|bitpack]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from graft_sglang.tree.builder import GraftConfig, build_graft_tree
from graft_sglang.tree.draft import DraftCandidates
from graft_sglang.tree.kernel import build_graft_tree_compiled, load_extension
from graft_sglang.tree.layout import TreeMaskMode, tree_mask
from graft_sglang.tree.retrieved import RetrievedCandidates
from tests.random_inputs import eagle_draft, random_retrieved

SHAPES = {16: (4, 4), 32: (4, 6), 64: (8, 6), 128: (8, 6)}  # N -> (topk, depth)
MASK_MODES = {"none": None, "full": TreeMaskMode.FULL_MASK, "qlen": TreeMaskMode.QLEN_ONLY,
              "bitpack": TreeMaskMode.QLEN_ONLY_BITPACKING}


def timed(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median microseconds per call."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) * 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(samples)


def inputs(bs: int, n: int, device: torch.device):
    topk, depth = SHAPES[n]
    gen = torch.Generator().manual_seed(bs * 1000 + n)
    d = eagle_draft(gen, bs, topk, depth, 32000)
    r = random_retrieved(gen, bs, d.num_candidates, 32000, n // 2)
    d = DraftCandidates(d.tokens.to(device), d.parents.to(device), d.scores.to(device))
    r = RetrievedCandidates(r.tokens.to(device), r.parents.to(device), r.anchors.to(device),
                            r.path_probs.to(device), r.valid.to(device))
    roots = torch.randint(0, 32000, (bs,), generator=gen).to(device)
    lens = torch.randint(100, 4000, (bs,), generator=gen).to(device)
    return roots, lens, d, r, GraftConfig(budget=n, threshold=0.02)


def reference(x: tuple, mode: TreeMaskMode | None) -> None:
    tree = build_graft_tree(*x)
    if mode is not None:
        tree_mask(tree.layout.ancestors, x[1], mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--mask-mode", default="none", choices=tuple(MASK_MODES))
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/kernels.py: no CUDA GPU here; run it on a GPU machine, or pass "
                 "--device cpu for the CPU build")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # a shared CPU machine; one thread keeps the numbers stable
    load_extension(device.type)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    mode = MASK_MODES[args.mask_mode]
    budgets = (16, 32) if mode == TreeMaskMode.QLEN_ONLY_BITPACKING else (16, 32, 64, 128)
    rows = []
    print(f"{name}: median us per call ({args.iters} runs), mask {args.mask_mode}")
    print(f"{'bs':>3} {'N':>4} {'reference':>10} {'kernel':>10} {'speedup':>8}")
    for bs in (1, 4, 16, 64):
        for n in budgets:
            x = inputs(bs, n, device)
            seq_lens_sum = int(x[1].sum())  # SGLang keeps this on the host
            ref = timed(lambda x=x: reference(x, mode), device, args.iters)
            ker = timed(lambda x=x, s=seq_lens_sum: build_graft_tree_compiled(*x, mode, s),
                        device, args.iters)
            rows.append({"bs": bs, "budget": n, "reference_us": round(ref, 1),
                         "kernel_us": round(ker, 1), "speedup": round(ref / ker, 2)})
            print(f"{bs:>3} {n:>4} {ref:>10.1f} {ker:>10.1f} {ref / ker:>8.2f}", flush=True)
    suffix = "" if mode is None else f"-mask-{args.mask_mode}"
    out = Path(args.out_dir) / f"kernels-{name.replace(' ', '_')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": name, "iters": args.iters, "mask_mode": args.mask_mode, "rows": rows}
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
