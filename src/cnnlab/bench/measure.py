"""Time and peak memory of one forward + backward pass.

Timing: built-in and custom steps alternate (``repeats`` pairs after ``warmup`` pairs) so load
from other processes hits both alike; the median is reported. CPU uses ``time.perf_counter``,
CUDA a pair of ``torch.cuda.Event``s around each step.

Peak memory is the most bytes the step itself holds at once (activations, saved tensors,
gradients, workspace tensors), excluding the inputs and weights that exist before it starts.
On CUDA that is ``max_memory_allocated`` minus the allocation at the start. The CPU allocator
keeps no such statistics, so on CPU a ``TorchDispatchMode`` records the storage of every tensor
each ATen op returns and, after every op, sums the storages still alive (weak references to the
C++ storage, so a tensor kept only by autograd for backward still counts).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """Track the peak of live tensor-storage bytes created while the mode is active.

    A storage an op first sees as an *input* existed before the mode (inputs, weights, running
    stats); views of it and in-place updates to it are not new memory and are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.created: dict[int, tuple[StorageWeakRef, int]] = {}
        self.existing: dict[int, StorageWeakRef] = {}
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
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.created.values()))
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


def peak_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``step`` beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with LiveBytes() as tracker:
        step()
    return tracker.peak


@contextmanager
def _timer(device: torch.device, times: list[float]) -> Iterator[None]:
    """Append the seconds the body takes on ``device`` to ``times``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    else:
        start_s = time.perf_counter()
        yield
        times.append(time.perf_counter() - start_s)


def median_seconds(
    steps: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int
) -> dict[str, float]:
    """Median seconds per call of each step, the steps run interleaved."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            with _timer(device, times[name]):
                step()
    return {name: statistics.median(values) for name, values in times.items()}
