"""Two rules for code that must also run on a GPU, checked on a CPU-only machine.

- `FactoryGuard`: a tensor made by a factory call (`torch.arange`, `torch.zeros`, ...) in das_lib says
  on which device (`device=`). One that does not lands on the CPU, and a GPU run then crashes where it
  meets the data ("Expected all tensors to be on the same device"), as `CachedForward._check` once did.
- `HostReads`: what das_lib reads back from tensor data on the host (`.item()`, `bool()`, `int()`,
  `.tolist()`, `.numpy()`, `.cpu()`). On a GPU each read waits until every queued kernel has run, so a
  training step must make few of them. On a CPU they cost nothing, so only counting them shows them.

Both attribute a call to the Python frame that made it and judge only calls made from das_lib itself:
what torch, transformers or peft do inside is theirs. torch.optim's own step counters are read on the
host by design (Adam without capturable=True keeps them on the CPU), so they are not counted.
"""
from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

PACKAGE = Path(__file__).resolve().parents[1] / "das_lib"
TORCH = Path(torch.__file__).resolve().parent
FACTORIES = {torch.arange, torch.zeros, torch.ones, torch.full, torch.empty, torch.eye, torch.tensor, torch.randperm,
             torch.randn, torch.rand, torch.randint, torch.linspace}
HOST_READ_METHODS = ("tolist", "numpy", "cpu")


def _in(frame: FrameType, folder: Path) -> bool:
    return Path(frame.f_code.co_filename).resolve().is_relative_to(folder)


def library_caller(frame: FrameType | None, package: Path = PACKAGE) -> str | None:
    """'file:line' of the first frame outside torch, when it lies in `package` and no frame of torch.optim
    stands between; else None."""
    while frame is not None and _in(frame, TORCH):
        if _in(frame, TORCH / "optim"):
            return None
        frame = frame.f_back
    if frame is None or not _in(frame, package):
        return None
    return f"{Path(frame.f_code.co_filename).relative_to(package.parent)}:{frame.f_lineno}"


class FactoryGuard(TorchFunctionMode):
    """Records every factory call made from das_lib without `device=` (in `violations`)."""

    def __init__(self, package: Path = PACKAGE):
        super().__init__()
        self.package, self.violations = package, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES and "device" not in kwargs:
            caller = library_caller(sys._getframe(1), self.package)
            if caller is not None:
                self.violations.append(f"{caller}: torch.{func.__name__}(...) without device=")
        return func(*args, **kwargs)


class HostReads(TorchDispatchMode):
    """Counts das_lib's reads of tensor data on the host, in `reads` ('file:line' per read)."""

    def __init__(self, package: Path = PACKAGE):
        super().__init__()
        self.package, self.reads = package, []
        self._saved = {}

    def _record(self, frame: FrameType | None) -> None:
        caller = library_caller(frame, self.package)
        if caller is not None:
            self.reads.append(caller)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:  # item(), bool(), int(), float()
            self._record(sys._getframe(1))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in HOST_READ_METHODS:  # these read the data without a dispatched operator on the CPU
            original = self._saved[name] = getattr(torch.Tensor, name)

            def counted(tensor, *args, _original=original, **kwargs):
                self._record(sys._getframe(1))
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)
