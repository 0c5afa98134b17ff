"""Latency of the compiled Graft tree build vs the PyTorch reference (not a test).

On a GPU (default ``--device cuda``): CUDA-event timing, warm-up, median of ``--iters`` runs,
for bs in {1, 4, 16, 64} and N in {16, 32, 64, 128}; writes
``bench/results/kernels-<gpu name>.json``. ``--device cpu`` records the same table on the CPU:
the host's sequential build (what ``build_graft_tree_fast`` runs there) and, as
``gpu_statements_us``, the GPU kernel's statements on one thread; ``faster`` names the faster
of kernel and reference per row (the contract ``build_graft_tree_fast``'s CPU choice rests on).
Without a GPU and without ``--device cpu`` it exits with a message. Both sides run as a server
step does: value checks off, per-request draft quotas (``--quotas``, default on), and with
``--mask-mode`` SGLang's attention mask written into a preallocated buffer (kernel: same launch;
reference: ``tree_mask(out=...)``).

    python -m bench.kernels [--device cuda|cpu] [--iters 50] [--mask-mode none|full|qlen|bitpack]
        [--no-quotas]
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
from graft_sglang.tree.layout import TreeMaskMode, tree_mask, tree_mask_bytes
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


def inputs(bs: int, n: int, device: torch.device, check_inputs: bool = True):
    """(roots, seq_lens, draft, retrieved, config) of a step at bs x N on ``device``."""
    topk, depth = SHAPES[n]
    gen = torch.Generator().manual_seed(bs * 1000 + n)
    d = eagle_draft(gen, bs, topk, depth, 32000)
    r = random_retrieved(gen, bs, d.num_candidates, 32000, n // 2)
    d = DraftCandidates(d.tokens.to(device), d.parents.to(device), d.scores.to(device))
    r = RetrievedCandidates(r.tokens.to(device), r.parents.to(device), r.anchors.to(device),
                            r.path_probs.to(device), r.valid.to(device))
    roots = torch.randint(0, 32000, (bs,), generator=gen).to(device)
    lens = torch.randint(100, 4000, (bs,), generator=gen).to(device)
    return roots, lens, d, r, GraftConfig(budget=n, threshold=0.02, check_inputs=check_inputs)


def stage_quotas(bs: int, n: int, device: torch.device) -> torch.Tensor:
    """[bs] draft quotas like graft-paper's stage split (a third, two thirds, all of N - 1)."""
    gen = torch.Generator().manual_seed(bs + n)
    splits = torch.tensor([(n - 1) // 3, 2 * (n - 1) // 3, n - 1])
    return splits[torch.randint(0, 3, (bs,), generator=gen)].to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--mask-mode", default="none", choices=tuple(MASK_MODES))
    parser.add_argument("--no-quotas", action="store_true", help="one quota for all (none)")
    parser.add_argument("--out-dir", default="bench/results")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench/kernels.py: no CUDA GPU here; run it on a GPU machine, or pass "
                 "--device cpu for the CPU build")
    device = torch.device(args.device)
    on_cpu = device.type == "cpu"
    if on_cpu:
        torch.set_num_threads(1)  # a shared CPU machine; one thread keeps the numbers stable
    load_extension(device.type)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    mode = MASK_MODES[args.mask_mode]
    budgets = (16, 32) if mode == TreeMaskMode.QLEN_ONLY_BITPACKING else (16, 32, 64, 128)
    rows = []
    print(f"{name}: median us per call ({args.iters} runs), mask {args.mask_mode}, "
          f"quotas {'none' if args.no_quotas else 'per request'}, checks off")
    print(f"{'bs':>3} {'N':>4} {'reference':>10} {'kernel':>10} {'gpu stmts':>10} "
          f"{'speedup':>8}")
    for bs in (1, 4, 16, 64):
        for n in budgets:
            x = inputs(bs, n, device, check_inputs=False)
            seq_lens_sum = int(x[1].sum())  # SGLang keeps this on the host
            quotas = None if args.no_quotas else stage_quotas(bs, n, device)
            buffer = None
            if mode is not None:
                buffer = torch.zeros(tree_mask_bytes(mode, bs, n, seq_lens_sum),
                                     dtype=torch.uint8, device=device)

            def reference(x=x, quotas=quotas, buffer=buffer, s=seq_lens_sum) -> None:
                tree = build_graft_tree(*x, quotas)
                if mode is not None:
                    tree_mask(tree.layout.ancestors, x[1], mode, out=buffer, seq_lens_sum=s)

            def kernel(gpu: bool, x=x, quotas=quotas, buffer=buffer, s=seq_lens_sum) -> None:
                build_graft_tree_compiled(*x, mode, s, draft_quotas=quotas, mask_out=buffer,
                                          gpu_statements=gpu)

            ref = timed(reference, device, args.iters)
            ker = timed(lambda: kernel(False), device, args.iters)
            row = {"bs": bs, "budget": n, "reference_us": round(ref, 1),
                   "kernel_us": round(ker, 1), "speedup": round(ref / ker, 2)}
            gpu = timed(lambda: kernel(True), device, max(3, args.iters // 5)) if on_cpu else None
            if gpu is not None:
                row["gpu_statements_us"] = round(gpu, 1)
                row["faster"] = "kernel" if ker < ref else "reference"
            rows.append(row)
            shown = "-" if gpu is None else f"{gpu:.1f}"
            print(f"{bs:>3} {n:>4} {ref:>10.1f} {ker:>10.1f} {shown:>10} {ref / ker:>8.2f}",
                  flush=True)
    suffix = "" if mode is None else f"-mask-{args.mask_mode}"
    out = Path(args.out_dir) / f"kernels-{name.replace(' ', '_')}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"device": name, "iters": args.iters, "mask_mode": args.mask_mode,
              "quotas": "none" if args.no_quotas else "per request", "check_inputs": False,
              "mask_into": None if mode is None else "preallocated buffer", "rows": rows}
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
