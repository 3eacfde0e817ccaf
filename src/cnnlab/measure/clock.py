"""Time stamps that mean the same on CPU and GPU, and interleaved medians of whole steps.

On CUDA the work is queued asynchronously, so a host clock would time the Python that queued the
kernels; events recorded in the stream time the kernels themselves. Warm-up calls are timed on
the host clock after a synchronisation instead: what they cost (tracing, compiling, autotuning,
CUDA-graph capture) happens on the host, and a user waits for all of it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

Mark = float | torch.cuda.Event


class Clock:
    """Device-aware stamps: ``ms(mark(), mark())`` is the device time between the two marks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self) -> Mark:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start: Mark, end: Mark) -> float:
        """Milliseconds from ``start`` to ``end``; waits for ``end`` to happen on the GPU."""
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def wall_seconds(self, call: Callable[[], object]) -> float:
        """Host seconds from a quiet device to the end of everything ``call`` queued."""
        self.sync()
        start = time.perf_counter()
        call()
        self.sync()
        return time.perf_counter() - start


@dataclass(frozen=True)
class Timing:
    """One step's measurements: the median timed call and what the untimed first calls cost."""

    median_s: float
    warmup_s: float
    warmup_calls: int
    runs_s: tuple[float, ...]


def interleaved_timings(
    steps: Mapping[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, Timing]:
    """Median seconds per call of each step, the steps alternating call by call.

    ``warmup`` rounds come first and are timed on the host clock (``Timing.warmup_s``, the time
    until the step is ready: compilation happens there), then ``repeats`` timed rounds. Taking
    turns means load from other processes and slow drifts (thermal throttling) hit every step
    alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be 0 or more, got {warmup}")
    clock = Clock(device)
    warm = dict.fromkeys(steps, 0.0)
    for _ in range(warmup):
        for name, step in steps.items():
            warm[name] += clock.wall_seconds(step)
    runs: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            clock.sync()
            start = clock.mark()
            step()
            runs[name].append(clock.ms(start, clock.mark()) / 1e3)
    return {
        name: Timing(statistics.median(runs[name]), warm[name], warmup, tuple(runs[name]))
        for name in steps
    }
