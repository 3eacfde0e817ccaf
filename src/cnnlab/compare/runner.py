"""The comparison itself, free of Hydra: build twins, measure, and assemble the report rows."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.compare import numerics, parity, timing
from cnnlab.compare.twins import cast, make_twins

TIME_KEYS = ("fwd_ms", "bwd_ms", "saved_MB", "peak_MB")


@dataclass
class Setup:
    """Everything that is the same for both implementations."""

    device: torch.device
    dtype: torch.dtype
    autocast: Callable[[], contextlib.AbstractContextManager]

    def batch(self, images: torch.Tensor, labels: torch.Tensor):
        return images.to(self.device, self.dtype), labels.to(self.device)

    def twins(self, model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
        pairs = make_twins(model, nn.CrossEntropyLoss())
        return {impl: cast(m, loss, self.device, self.dtype) for impl, (m, loss) in pairs.items()}


def _ratio(custom: float, builtin: float) -> float:
    return custom / builtin if builtin > 0 and math.isfinite(custom) else float("nan")


def _timing_columns(custom: dict[str, float], builtin: dict[str, float]) -> dict[str, float]:
    row = {}
    for key in TIME_KEYS:
        row[f"{key}_custom"], row[f"{key}_builtin"] = custom[key], builtin[key]
    row["fwd_ratio"] = _ratio(custom["fwd_ms"], builtin["fwd_ms"])
    row["bwd_ratio"] = _ratio(custom["bwd_ms"], builtin["bwd_ms"])
    return row


def compare_layers(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    setup: Setup,
    warmup: int,
    repeats: int,
) -> tuple[list[dict], dict]:
    """Per-layer rows (errors + timing) and the whole-step timing row."""
    images, labels = setup.batch(images, labels)
    twins = setup.twins(model)
    traces = {
        impl: numerics.trace_step(m, loss, images, labels, setup.autocast)
        for impl, (m, loss) in twins.items()
    }
    rows = numerics.compare_traces(traces["custom"], traces["builtin"])
    layer_times, step_times = timing.median_profile(
        twins, images, labels, setup.autocast, setup.device, warmup, repeats
    )
    for row in rows:
        row.update(
            _timing_columns(
                layer_times["custom"][row["layer"]], layer_times["builtin"][row["layer"]]
            )
        )
    step = {"layer": "whole step", "type": type(model).__name__}
    step.update(_timing_columns(step_times["custom"], step_times["builtin"]))
    return rows, step


def compare_training(
    model: nn.Module,
    datamodule,
    setup: Setup,
    epochs: int,
    lr: float,
    momentum: float,
    seed: int,
    max_batches: int | None = None,
) -> parity.ParityHistory:
    """Train fresh twins of ``model`` side by side (the layer comparison's twins are spent)."""
    return parity.train_parity(
        setup.twins(model),
        datamodule,
        epochs,
        lr,
        momentum,
        seed,
        setup.batch,
        setup.autocast,
        max_batches,
    )
