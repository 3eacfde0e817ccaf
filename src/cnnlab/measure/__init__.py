"""How cnnlab times and measures a step: one home for ``cnnlab-bench`` and ``cnnlab-compare``.

``clock``  -- device-aware time stamps (``perf_counter`` on CPU, CUDA events on GPU) and
              interleaved medians after a timed warm-up;
``memory`` -- peak bytes of a step on CPU and CUDA, and the bytes autograd saves for backward.

Both tools reading the same code is what makes their numbers comparable.
"""

from cnnlab.measure.clock import Clock, Timing, interleaved_timings
from cnnlab.measure.memory import (
    MIB,
    LiveBytes,
    MemoryTracker,
    SavedBytes,
    allocator_peak_bytes,
    peak_bytes,
    tracking_memory,
)

__all__ = [
    "MIB",
    "Clock",
    "LiveBytes",
    "MemoryTracker",
    "SavedBytes",
    "Timing",
    "allocator_peak_bytes",
    "interleaved_timings",
    "peak_bytes",
    "tracking_memory",
]
