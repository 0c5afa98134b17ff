"""``init_cpu_threads_env``: bind this process's compute threads to the given CPUs.

The real op pins each OpenMP thread to one core (and memory to its NUMA node); the stand-in sets
torch's intra-op thread count to the number of CPUs and the process's CPU affinity to them.
"""

from __future__ import annotations

import os

import torch

from ._registry import register


def parse_cpu_ids(cpu_ids: str) -> list[int]:
    """``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11]. Raises ValueError for an empty or
    malformed list (the format of ``SGLANG_CPU_OMP_THREADS_BIND`` entries)."""
    ids: list[int] = []
    for part in cpu_ids.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(
                f"init_cpu_threads_env: cpu ids must look like '0-3,8' "
                f"(SGLANG_CPU_OMP_THREADS_BIND), got {cpu_ids!r}"
            )
        ids += range(int(first), int(last or first) + 1)
    return sorted(set(ids))


def init_cpu_threads_env(cpu_ids: str) -> str:
    """Use ``len(cpus)`` intra-op threads on exactly the CPUs ``cpu_ids``; returns a one-line
    description of the binding."""
    cpus = parse_cpu_ids(cpu_ids)
    torch.set_num_threads(len(cpus))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    return f"sgl_kernel stand-in: {len(cpus)} threads bound to cpus {cpus}"


register("init_cpu_threads_env(str cpu_ids) -> str", init_cpu_threads_env,
         "CompositeExplicitAutograd")
