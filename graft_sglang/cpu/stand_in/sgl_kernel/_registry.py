"""The ``sgl_kernel`` torch-library fragment the stand-in registers its ops in, and the raiser
for names it only has to make importable.

Ops are registered with explicit schemas (those of sgl-kernel's CPU build,
``torch_extension_cpu.cpp``, with the attention signatures SGLang 0.5.23's ``intel_amx`` backend
calls), so ``torch.ops.sgl_kernel.<name>`` accepts the same positional and keyword arguments as
the real op.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import torch

# A FRAGMENT, as sgl-kernel's own registrations are: it adds names to the namespace without
# claiming it. Dropping this object (the package garbage-collected) removes the registrations.
LIBRARY = torch.library.Library("sgl_kernel", "FRAGMENT")


def register(schema: str, impl: Callable[..., Any], dispatch_key: str = "CPU") -> None:
    """Define ``sgl_kernel::<schema>`` and bind ``impl`` to it for ``dispatch_key``.

    ``dispatch_key`` "CPU" for ops with tensor arguments; "CompositeExplicitAutograd" for ops
    without any (the dispatcher has no device to pick a kernel by).
    Raises RuntimeError if the namespace already defines the name (a real sgl-kernel imported
    in the same process).
    """
    name = schema.split("(", 1)[0]
    LIBRARY.define(schema)
    LIBRARY.impl(name, impl, dispatch_key)


def register_fake(name: str, fake: Callable[..., Any]) -> None:
    """Shape-only implementation of ``sgl_kernel::<name>`` for ``torch.compile``'d callers."""
    torch.library.register_fake(f"sgl_kernel::{name}", fake, lib=LIBRARY)


def not_implemented(qualname: str) -> Callable[..., NoReturn]:
    """A callable named after ``qualname`` that raises NotImplementedError naming it.

    For names SGLang imports at module import time on its CPU path but only calls for model
    families the stand-in does not serve.
    """

    def raiser(*args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"{qualname} is not implemented by the pure-PyTorch sgl_kernel stand-in "
            "(graft_sglang/cpu/stand_in); serving this model on CPU needs a real sgl-kernel CPU "
            "build"
        )

    raiser.__name__ = qualname.rsplit(".", 1)[-1]
    raiser.__qualname__ = raiser.__name__
    raiser.__doc__ = f"{qualname}: not implemented by the stand-in; raises NotImplementedError."
    return raiser
