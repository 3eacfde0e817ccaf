"""Name the hardware a measurement ran on, for benchmark tables and compare reports."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def set_tf32(allowed: bool) -> str:
    """Allow TF32 in CUDA fp32 matmuls and convolutions alike, or in neither; returns ``on`` or
    ``off`` for the report.

    PyTorch's defaults differ between the two (cuDNN convolutions may use TF32, matmuls may
    not), and the hand-written convolution is a matmul: left as they are, an "fp32" comparison
    would put built-in TF32 convolutions against custom full-precision ones.
    """
    import torch

    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed
    return "on" if allowed else "off"
