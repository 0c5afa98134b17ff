"""Counting what reaches the host on CPU tensors: scalar reads (any tensor) and the copies of
tensors that stand in for accelerator-resident ones (``OnDevice``). Shared by the tests and
``bench.step_overhead``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostReads(TorchDispatchMode):
    """Counts operators that read a tensor value on the host, on any tensor (``.item()``,
    ``bool()``, ``int()``, an index, ``torch.equal``); ``OnDevice`` counts the copies."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if "_local_scalar_dense" in name or "is_nonzero" in name or "aten.equal" in name:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


class OnDevice(torch.Tensor):
    """A CPU tensor standing in for one on the accelerator: every tensor computed from it is one
    too (results of C++ extensions excepted), and every way its values reach the host
    (``.cpu()``, ``.to("cpu")``, ``.tolist()``, ``.numpy()``, ``.item()``, ``bool()``,
    ``int()``, ``float()``, use as an index, ``torch.equal``) is recorded in ``to_host``."""

    to_host: ClassVar[list[str]] = []
    _READS: ClassVar[tuple] = (torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy,
                               torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__,
                               torch.Tensor.__float__, torch.Tensor.__index__, torch.equal)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # ``.to(x.device)`` keeps a tensor where it is (all CPU here): only an explicit host
        # placement counts
        to_cpu = func is torch.Tensor.to and "cpu" in (*args[1:], kwargs.get("device"))
        if func not in cls._READS and not to_cpu:
            return super().__torch_function__(func, types, args, kwargs)
        cls.to_host.append(getattr(func, "__name__", str(func)))
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out


def on_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an ``OnDevice`` tensor (the same storage)."""
    return t.as_subclass(OnDevice)
