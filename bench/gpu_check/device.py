"""Device memory as the checks see it: peaks of a block of work, and devices smaller than the real one.

On CUDA the caching allocator answers: ``max_memory_allocated`` and ``max_memory_reserved`` over the
block, and ``set_per_process_memory_fraction`` for a smaller device (its own limit, so an
allocation past it raises a real ``torch.OutOfMemoryError``). On the CPU (the smoke test) the
live-tensor tracker stands in for both: tensors created in the block plus those already resident
(model, optimizer state) for the peak, and a tracker that raises ``torch.OutOfMemoryError`` past a
limit for the smaller device.
"""
from __future__ import annotations

import gc
import platform
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

import torch

from pipeline.memory import LiveTensorTracker, tensor_bytes


class Meter:
    """Peak allocated (and, on CUDA, reserved) bytes of the block it wraps, counted from a reset."""

    def __init__(self, device: torch.device, resident: Callable[[], int] = lambda: 0):
        self.device = device
        self.resident = resident
        """CPU only: bytes already on the 'device' when the block starts (CUDA counts them itself)."""
        self.allocated = 0
        self.reserved: int | None = None
        self.before = 0
        """Bytes allocated when the block starts."""
        self._tracker: LiveTensorTracker | None = None
        self._base = 0

    def __enter__(self) -> "Meter":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self._base = self.before = self.resident()
            self._tracker = LiveTensorTracker()
            self._tracker.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.allocated = torch.cuda.max_memory_allocated(self.device)
            self.reserved = torch.cuda.max_memory_reserved(self.device)
        else:
            assert self._tracker is not None
            self._tracker.__exit__(*exc)
            self.allocated = self._base + self._tracker.peak


class CappedTracker(LiveTensorTracker):
    """The CPU's stand-in for a device of ``limit`` bytes: raises ``torch.OutOfMemoryError`` when the
    tensors created under it, plus ``base`` bytes already resident, exceed the limit.

    As the allocator, it fails an op that allocates, and only the work a device would do: an op on
    tensors that require grad (the forward) or one run without grad mode (backward, inference).
    Host bookkeeping in between (collating a batch, the back-off's own arithmetic) is counted but
    never fails, as host memory would not on a GPU.
    """

    def __init__(self, limit: int, base: int = 0):
        super().__init__()
        self.limit, self.base = limit, base

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.set_.source_Storage_storage_offset, torch.ops.aten.set_.source_Storage):
            return func(*args, **(kwargs or {}))   # adopts an existing (mapped) storage: allocates nothing
        before = self.live
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self.live > before and self.base + self.live > self.limit and _device_work(args):
            raise torch.OutOfMemoryError(
                f"out of memory (CPU emulation of a {self.limit / 2**20:.1f} MiB device): {func} brought live "
                f"tensors to {(self.base + self.live) / 2**20:.1f} MiB")
        return out


def _device_work(args: tuple[Any, ...]) -> bool:
    if not torch.is_grad_enabled():
        return True
    flat = [x for a in args for x in (a if isinstance(a, (list, tuple)) else (a,))]
    return any(isinstance(t, torch.Tensor) and t.requires_grad for t in flat)


@contextmanager
def device_limit(device: torch.device, limit: int, base: int = 0) -> Iterator[None]:
    """Tensors on ``device`` may take at most ``limit`` bytes inside the block (``base``: CPU only,
    bytes resident before it)."""
    if device.type == "cuda":
        free_cached(device)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, max(limit, 1) / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            free_cached(device)
        return
    with CappedTracker(limit, base):
        yield


def warm_up(device: torch.device) -> None:
    """One small AMP forward and backward, so that the libraries' handles and workspaces (cuBLAS) exist
    before anything is measured, as they do in every training step but a job's first."""
    x = torch.randn(256, 256, device=device, requires_grad=True)
    with torch.autocast(device.type, enabled=device.type == "cuda"):
        y = (x @ x).float().sum()
    y.backward()
    del x, y
    free_cached(device)


def free_cached(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def resident_bytes(modules: Iterable[torch.nn.Module], optimizer: torch.optim.Optimizer | None = None) -> int:
    """Bytes of the modules' parameters and gradients and the optimizer's state tensors."""
    tensors: list[torch.Tensor] = []
    for module in modules:
        for p in module.parameters():
            tensors.append(p)
            if p.grad is not None:
                tensors.append(p.grad)
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensor_bytes(tensors)


def outside_allocator(device: torch.device) -> int | None:
    """Bytes the device has in use beyond this process's caching allocator: the CUDA context, the
    libraries' handles (and any other process on the device). None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)


def total_bytes(device: torch.device) -> int | None:
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def describe(device: torch.device) -> dict[str, Any]:
    """What the report's header says about the machine."""
    import torch_geometric

    info: dict[str, Any] = {"device": str(device), "python": sys.version.split()[0], "host": platform.node(),
                            "torch": torch.__version__, "torch_geometric": torch_geometric.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 2),
                     "cuda": torch.version.cuda, "driver_visible_devices": torch.cuda.device_count()})
    return info
