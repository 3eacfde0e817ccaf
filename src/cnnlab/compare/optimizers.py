"""``cnnlab-compare mode=optim``: the hand-written optimizer against torch.optim's, in training.

Two copies of one network (the layers of ``model.impl``, identical weights) train on the same
batches in the same order, one stepped by ``cnnlab.optim`` and one by ``torch.optim``, with the
``optimizer`` config group's settings. The loss curves are overlaid as in layer parity; since
both sides run the same layers, any gap is the optimizer's. In float64 they agree to round-off.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from cnnlab.compare import parity
from cnnlab.layers import convert
from cnnlab.optim import IMPLS, optimizer_class

#: cnnlab keys of an optimizer config, not constructor arguments
CNNLAB_KEYS = ("impl", "full_batch")


def build_optimizer(
    config: Mapping[str, Any], impl: str, model: nn.Module
) -> torch.optim.Optimizer:
    """The optimizer ``config`` describes, in the ``impl`` family, over ``model``'s parameters."""
    config = {**config, "impl": impl}
    kwargs = {k: v for k, v in config.items() if k not in CNNLAB_KEYS}
    kwargs["_target_"] = optimizer_class(config)
    if isinstance(kwargs.get("betas"), list):
        kwargs["betas"] = tuple(kwargs["betas"])  # torch checks for a tuple
    return instantiate(kwargs)(params=model.parameters())


def optimizer_twins(
    model: nn.Module, layers: str, device: torch.device, dtype: torch.dtype
) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``{optimizer impl: (model, loss)}``: two copies of ``model`` with ``layers`` layers."""
    return {
        impl: (
            convert(copy.deepcopy(model), to=layers).to(device=device, dtype=dtype),
            convert(nn.CrossEntropyLoss(), to=layers),
        )
        for impl in IMPLS
    }


def max_parameter_difference(twins: dict[str, tuple[nn.Module, nn.Module]]) -> float:
    """max |θ_custom - θ_builtin| over every weight after training."""
    custom, builtin = (twins[impl][0].state_dict() for impl in IMPLS)
    return max(
        float((custom[k].double() - builtin[k].double()).abs().max())
        for k in custom
        if custom[k].is_floating_point() and custom[k].numel()
    )


def compare_optimizers(
    model: nn.Module,
    layers: str,
    optimizer: Mapping[str, Any],
    datamodule,
    setup,
    epochs: int,
    seed: int,
    max_batches: int | None = None,
) -> tuple[parity.ParityHistory, float]:
    """Train both copies; return their history and the largest weight difference at the end."""
    twins = optimizer_twins(model, layers, setup.device, setup.dtype)
    history = parity.train_parity(
        twins,
        datamodule,
        epochs,
        lr=0.0,  # unused: each side gets its optimizer from make_optimizer
        momentum=0.0,
        seed=seed,
        to=setup.batch,
        autocast=setup.autocast,
        max_batches=max_batches,
        make_optimizer=lambda impl, m: build_optimizer(optimizer, impl, m),
        full_batch=bool(optimizer.get("full_batch", False)),
    )
    return history, max_parameter_difference(twins)
