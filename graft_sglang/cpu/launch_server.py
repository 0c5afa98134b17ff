"""``python -m graft_sglang.cpu.launch_server [any python -m sglang.launch_server argument]``.

Serves with SGLang 0.5.23's own server on a CPU machine. Before SGLang is imported it sets what
its CPU path needs, then runs what ``python -m sglang.launch_server`` runs, in this process, with
the arguments unchanged plus the CPU defaults below for flags the user did not give:

* ``SGLANG_USE_CPU_ENGINE=1`` (SGLang's ``is_cpu()``), ``HF_HUB_OFFLINE=1`` (no surprise
  downloads), ``OMP_NUM_THREADS=1`` unless set, and for ``--tp-size`` > 1 one core per rank
  (``SGLANG_CPU_OMP_THREADS_BIND``) unless set;
* ``stand_in/`` (a pure-PyTorch ``sgl_kernel``) first on ``sys.path`` and ``PYTHONPATH`` when no
  real ``sgl_kernel`` imports here; the plugin's entry point then keeps the ``intel_amx``
  backend and turns PyNccl off (``graft_sglang.cpu.platform``);
* ``--device cpu --attention-backend intel_amx --sampling-backend pytorch --disable-cuda-graph
  --sleep-on-idle`` (an idle scheduler otherwise spins a whole core) ``--max-total-tokens 16384``
  (SGLang sizes the KV pool from the free memory otherwise);
* no ``--model-path``: the embedded SmolLM2-135M-Instruct (converted once to safetensors), in
  float32 unless ``--dtype`` says otherwise;
  ``--speculative-algorithm`` EAGLE3 or GRAFT without ``--speculative-draft-model-path``: the
  shipped EAGLE-3 head; GRAFT on the embedded model: the step costs measured for it on a
  2-core CPU (``costs-embedded.json``, from ``python -m bench.cost_model``) as
  ``SGLANG_GRAFT_COST_TABLE`` unless set (``none``: verify whole trees).

Errors in the arguments (SGLang's or GRAFT's refusals) end the process with exit code 2 and
the message, not a traceback.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

STAND_IN_DIR = Path(__file__).resolve().parent / "stand_in"
EMBEDDED_COSTS = Path(__file__).resolve().parent / "costs-embedded.json"
HEAD_ALGORITHMS = ("EAGLE", "EAGLE3", "GRAFT")
CPU_FLAGS: tuple[tuple[str, ...], ...] = (
    ("--device", "cpu"),
    ("--attention-backend", "intel_amx"),
    ("--sampling-backend", "pytorch"),
    ("--disable-cuda-graph",),
    ("--sleep-on-idle",),
    # SGLang sizes the KV pool from free memory (tens of GB, zeroed for a minute on a laptop).
    ("--max-total-tokens", "16384"),
)


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of ``flag`` in ``argv`` (``--flag v`` or ``--flag=v``; the last one wins), ``""``
    for a flag given without a value, None if absent."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag:
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            value = "" if nxt.startswith("--") else nxt
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def real_sgl_kernel() -> bool:
    """Whether a real sgl-kernel imports in this process (the CUDA build needs libcuda)."""
    if importlib.util.find_spec("sgl_kernel") is None:
        return False
    try:
        import sgl_kernel  # noqa: F401
    except Exception:  # a CUDA-only build fails in many ways without a GPU driver
        sys.modules.pop("sgl_kernel", None)
        return False
    return True


def omp_bind(tp_size: int, cores: int) -> str:
    """``SGLANG_CPU_OMP_THREADS_BIND`` for ``tp_size`` ranks: one core each, round robin."""
    return "|".join(str(rank % cores) for rank in range(tp_size))


def embedded_model_dir() -> Path:
    """The embedded model as a safetensors directory (converted on first use)."""
    from graft_sglang.engine.model import DEFAULT_MODEL, cache_dir, load_model

    path = cache_dir() / "models" / DEFAULT_MODEL
    if not (path / "model.safetensors").is_file():
        load_model(DEFAULT_MODEL)
    return path


def server_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the CPU defaults, the embedded model and the shipped head added where the
    user gave none."""
    out = list(argv)
    for flag, *value in CPU_FLAGS:
        if flag_value(out, flag) is None:
            out += [flag, *value]
    if flag_value(out, "--model-path") is None:
        out += ["--model-path", str(embedded_model_dir())]
        if flag_value(out, "--dtype") is None:  # SGLang's "auto" serves fp32 weights in fp16
            out += ["--dtype", "float32"]
    algorithm = (flag_value(out, "--speculative-algorithm") or "").upper()
    if algorithm in HEAD_ALGORITHMS and flag_value(out, "--speculative-draft-model-path") is None:
        from graft_sglang.eagle3.export import WEIGHTS_DIR

        out += ["--speculative-draft-model-path", str(WEIGHTS_DIR)]
    return out


def server_env(argv: Sequence[str], env: dict[str, str], stand_in: bool) -> dict[str, str]:
    """The environment SGLang's CPU path needs (``env`` updated and returned)."""
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    tp = int(flag_value(argv, "--tp-size") or flag_value(argv, "--tp") or 1)
    if tp > 1:
        env.setdefault("SGLANG_CPU_OMP_THREADS_BIND", omp_bind(tp, os.cpu_count() or 1))
    graft = (flag_value(argv, "--speculative-algorithm") or "").upper() == "GRAFT"
    if graft and flag_value(argv, "--model-path") is None:
        env.setdefault("SGLANG_GRAFT_COST_TABLE", str(EMBEDDED_COSTS))
    if stand_in:
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join([str(STAND_IN_DIR), *paths])
    return env


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stand_in = not real_sgl_kernel()
    server_env(argv, os.environ, stand_in)  # type: ignore[arg-type]
    if stand_in:
        sys.path.insert(0, str(STAND_IN_DIR))
    full = server_argv(argv)
    # What ``python -m sglang.launch_server`` runs, with the argument resolution (where every
    # refusal is raised, before any server process starts) reported as an error message.
    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    server_args = prepare_server_args(full)
    try:
        server_args.resolve_once()
    except ValueError as err:
        print(f"graft_sglang.cpu.launch_server: error: {err}", file=sys.stderr)
        return 2
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
