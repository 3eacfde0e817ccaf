"""Peak memory of a step, and the bytes autograd saves for backward, on CPU and CUDA.

Peak memory is the most bytes the step holds at once beyond what existed before it (inputs,
weights, optimizer state): activations, saved tensors, gradients, workspace tensors.

- CUDA: ``max_memory_allocated`` minus the allocation at the start.
- CPU, eager: the CPU allocator keeps no statistics, so ``LiveBytes``, a ``TorchDispatchMode``,
  records the storage of every tensor each ATen op returns and, after every op, sums the storages
  still alive (weak references to the C++ storage, so a tensor kept only by autograd for backward
  still counts).
- CPU, compiled: dynamo refuses to run under a user dispatch mode, and inductor's kernels allocate
  their buffers without going through the dispatcher, so there the allocator's own events are
  read back from the profiler (``profile_memory=True``). On an eager step both CPU methods agree
  (``tests/test_bench.py``), apart from temporaries an ATen kernel frees before it returns, which
  only the allocator sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MIB = 2**20
_HOST = {
    torch.autograd.DeviceType.CPU,
    torch.autograd.DeviceType.MKLDNN,
    torch.autograd.DeviceType.IDEEP,
}


class LiveBytes(TorchDispatchMode):
    """Track the live and peak tensor-storage bytes created while the mode is active.

    A storage an op first sees as an *input* existed before the mode (inputs, weights, running
    stats); views of it and in-place updates to it are not new memory and are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[int, tuple[StorageWeakRef, int]] = {}
        self.existing: dict[int, StorageWeakRef] = {}
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for storage in _storages((args, kwargs)):
            if storage._cdata not in self.created and not self._known(storage):
                self.existing[storage._cdata] = StorageWeakRef(storage)
        out = func(*args, **kwargs)
        for storage in _storages(out):
            if not self._known(storage):
                self.created[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        self.created = {k: v for k, v in self.created.items() if not v[0].expired()}
        self.live = sum(nbytes for _, nbytes in self.created.values())
        self.peak = max(self.peak, self.live)
        return out

    def _known(self, storage: torch.UntypedStorage) -> bool:
        key = storage._cdata
        if key in self.created and not self.created[key][0].expired():
            return True
        return key in self.existing and not self.existing[key].expired()


def _storages(tree: object) -> Iterator[torch.UntypedStorage]:
    for leaf in tree_leaves(tree):
        if isinstance(leaf, torch.Tensor):
            yield leaf.untyped_storage()


class MemoryTracker(Protocol):
    """Peaks over spans of one tracked region: ``peak_since(restart())`` after the span."""

    def restart(self) -> int:
        """Start a span: forget the peak so far; returns the bytes allocated now."""
        ...

    def peak_since(self, start: int) -> int:
        """Most bytes allocated at once since the ``restart`` that returned ``start``, above it."""
        ...


class _CudaTracker:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def restart(self) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_since(self, start: int) -> int:
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - start


class _LiveBytesTracker:
    def __init__(self, mode: LiveBytes) -> None:
        self.mode = mode

    def restart(self) -> int:
        self.mode.peak = self.mode.live
        return self.mode.live

    def peak_since(self, start: int) -> int:
        return self.mode.peak - start


@contextmanager
def tracking_memory(device: torch.device) -> Iterator[MemoryTracker]:
    """Track eager work inside the block (CPU: under ``LiveBytes``, which slows it down)."""
    if device.type == "cuda":
        yield _CudaTracker(device)
        return
    with LiveBytes() as mode:
        yield _LiveBytesTracker(mode)


def allocator_peak_bytes(step: Callable[[], object]) -> int:
    """Peak bytes the CPU allocator holds during ``step`` above its start, from profiler events."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        if event.device_type() in _HOST:
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def peak_bytes(step: Callable[[], object], device: torch.device, compiled: bool = False) -> int:
    """Peak bytes allocated by one call of ``step`` beyond what was allocated before it.

    ``compiled`` says ``step`` runs ``torch.compile``d code; on CPU that needs the allocator's
    events (see the module docstring).
    """
    if compiled and device.type == "cpu":
        return allocator_peak_bytes(step)
    with tracking_memory(device) as tracker:
        start = tracker.restart()
        step()
        return tracker.peak_since(start)


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of distinct non-parameter storages autograd saves for backward, per owner and total.

    Callers set ``owner`` (e.g. from layer hooks) while a layer runs; saves made while it is
    ``None`` only count towards ``total``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.owner: str | None = None
        self.total = 0
        self.by_owner: dict[str, int] = {}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in self.params and key not in self.seen:
            self.seen.add(key)
            self.total += storage.nbytes()
            if self.owner is not None:
                self.by_owner[self.owner] = self.by_owner.get(self.owner, 0) + storage.nbytes()
        return tensor
