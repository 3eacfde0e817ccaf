"""``cnnlab.bench layers``: every case, built-in vs custom, on each requested device/precision."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn as nn

from cnnlab.bench.cases import Case
from cnnlab.bench.report import Row
from cnnlab.layers import convert
from cnnlab.measure import MIB, interleaved_timings, peak_bytes


def settings(device: str) -> list[tuple[str, torch.device, torch.dtype | None]]:
    """(label, device, autocast dtype) for ``--device``: CPU fp32; CUDA fp32 and bf16 autocast."""
    cpu = [("cpu fp32", torch.device("cpu"), None)]
    cuda = [
        ("cuda fp32", torch.device("cuda"), None),
        ("cuda bf16 autocast", torch.device("cuda"), torch.bfloat16),
    ]
    if device == "cpu":
        return cpu
    if not torch.cuda.is_available():
        if device == "cuda":
            raise SystemExit("--device cuda: CUDA is not available here; use --device cpu.")
        return cpu
    return cuda if device == "cuda" else cpu + cuda


def make_step(
    module: nn.Module, case: Case, batch: int, device: torch.device, autocast: torch.dtype | None
) -> Callable[[], None]:
    """One training step of ``module`` (forward + backward, no optimizer) on fixed random data.

    Gradients are reset to ``None`` after each step, so every step allocates them as training
    with ``zero_grad(set_to_none=True)`` does.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *case.shape, generator=generator).to(device)
    x.requires_grad_(case.input_grad)
    target = None
    if case.classes is not None:
        target = torch.randint(case.classes, (batch,), generator=generator).to(device)

    def forward() -> torch.Tensor:
        context = torch.autocast(device.type, autocast) if autocast else nullcontext()
        with context:
            return module(x) if target is None else module(x, target)

    grad = None if target is not None else torch.randn_like(forward().detach())

    def step() -> None:
        forward().backward(grad)
        x.grad = None
        for p in module.parameters():
            p.grad = None

    return step


def run_case(
    case: Case,
    setting: tuple[str, torch.device, torch.dtype | None],
    batch: int,
    repeats: int,
    warmup: int,
) -> Row:
    """Time and measure the built-in module and its converted custom twin, same weights."""
    label, device, autocast = setting
    builtin = case.build().to(device)
    custom = convert(copy.deepcopy(builtin), to="custom")
    steps = {
        impl: make_step(module, case, batch, device, autocast)
        for impl, module in (("builtin", builtin), ("custom", custom))
    }
    timings = interleaved_timings(steps, device, repeats=repeats, warmup=warmup)
    memory = {impl: peak_bytes(step, device) for impl, step in steps.items()}
    return Row(
        setting=label,
        case=case.name,
        shape="x".join(map(str, (batch, *case.shape))),
        builtin_ms=timings["builtin"].median_s * 1e3,
        custom_ms=timings["custom"].median_s * 1e3,
        builtin_mib=memory["builtin"] / MIB,
        custom_mib=memory["custom"] / MIB,
    )
