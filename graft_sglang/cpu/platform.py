"""What a CPU server with the stand-in ``sgl_kernel`` needs inside every SGLang process.

Installed by the plugin's entry point (``registration.register``), which SGLang runs in the
launcher before server-argument resolution and in every scheduler subprocess. It acts only when
``SGLANG_USE_CPU_ENGINE=1`` and the ``sgl_kernel`` on the path is the stand-in (so never next to a
real sgl-kernel):

* the platform reports AMX, so resolution keeps ``--attention-backend intel_amx`` (without AMX
  it silently becomes ``torch_native``, which EAGLE refuses: no tree mask); the layers' own AMX
  checks ask the stand-in, which has no ``convert_weight_packed``, so every layer still runs its
  ``forward_native`` path;
* process groups are built without PyNccl: SGLang picks it on a plain CPU, and it fails with
  "Expected a cuda device"; all-reduce then falls back to ``torch.distributed`` over gloo;
* the overlap schedule's relay of draft inputs (``overlap_utils.gather_spec_extras``, a Triton
  kernel with no CPU path) is a plain torch gather, so speculative decoding can run with the
  overlap schedule on CPU.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

STAND_IN_DIR = Path(__file__).resolve().parent / "stand_in"
PARALLEL_GROUP = "sglang.srt.distributed.parallel_state.init_model_parallel_group"
RELAY_GATHER = "sglang.srt.managers.overlap_utils.gather_spec_extras"
_installed = False


def stand_in_active() -> bool:
    """Whether ``import sgl_kernel`` would import the stand-in."""
    spec = importlib.util.find_spec("sgl_kernel")
    return (spec is not None and spec.origin is not None
            and Path(spec.origin).resolve().is_relative_to(STAND_IN_DIR))


def without_pynccl(*args: Any, **kwargs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """BEFORE hook of ``init_model_parallel_group``: PyNccl off unless the caller chose."""
    if kwargs.get("use_pynccl") is None and len(args) < 4:
        kwargs["use_pynccl"] = False
    return args, kwargs


def gather_spec_extras(
    indices: torch.Tensor, topk_p_buf: torch.Tensor, topk_index_buf: torch.Tensor,
    output_tokens_buf: torch.Tensor, hidden_states_buf: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """SGLang's ``gather_spec_extras``: rows ``indices [m]`` of each relay buffer (new tensors;
    ``hidden_states_buf`` None gives None)."""
    rows = indices.long()
    return (topk_p_buf[rows], topk_index_buf[rows], output_tokens_buf[rows],
            None if hidden_states_buf is None else hidden_states_buf[rows])


def installed() -> bool:
    """Whether this process serves on the stand-in (``install`` took effect)."""
    return _installed


def install() -> bool:
    """Install the CPU-serving adjustments in this process if it serves on the stand-in
    (idempotent). Returns whether they are installed."""
    global _installed
    if _installed:
        return True
    if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1" or not stand_in_active():
        return False
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.runtime_context import override_platform

    override_platform(has_amx=True).install()
    HookRegistry.register(PARALLEL_GROUP, without_pynccl, HookType.BEFORE)
    HookRegistry.register(RELAY_GATHER, gather_spec_extras, HookType.REPLACE)
    _installed = True
    return True
