"""Swap a model's layers between the hand-written and the built-in family, weights untouched.

Every custom layer subclasses its ``torch.nn`` namesake and overrides only ``forward`` (the
contract in docs/architecture.md), so both classes keep exactly the same instance state: the
parameters, buffers, constructor settings (stride, eps, ceil_mode, ...), ``training`` flag and
hook dicts all live in the instance ``__dict__``. Swapping therefore means building an instance
of the twin class *without* running ``__init__`` (which would re-initialise the weights) and
giving it the old instance's state. The same Parameter and buffer objects are reused, so device,
dtype, ``requires_grad``, optimizer references and ``state_dict`` bits survive a round trip.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

from cnnlab.layers.activation import Flatten, ReLU
from cnnlab.layers.batchnorm import BatchNorm2d
from cnnlab.layers.conv import Conv2d
from cnnlab.layers.dropout import Dropout
from cnnlab.layers.linear import Linear
from cnnlab.layers.loss import CrossEntropyLoss, MSELoss, NLLLoss
from cnnlab.layers.pooling import AvgPool2d, MaxPool2d

TARGETS = ("custom", "builtin")

CUSTOM_TO_BUILTIN: dict[type[nn.Module], type[nn.Module]] = {
    Conv2d: nn.Conv2d,
    MaxPool2d: nn.MaxPool2d,
    AvgPool2d: nn.AvgPool2d,
    Linear: nn.Linear,
    ReLU: nn.ReLU,
    Dropout: nn.Dropout,
    BatchNorm2d: nn.BatchNorm2d,
    Flatten: nn.Flatten,
    CrossEntropyLoss: nn.CrossEntropyLoss,
    NLLLoss: nn.NLLLoss,
    MSELoss: nn.MSELoss,
}
BUILTIN_TO_CUSTOM = {builtin: custom for custom, builtin in CUSTOM_TO_BUILTIN.items()}


def _twin(module: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """An instance of ``cls`` holding ``module``'s state, built without re-initialisation.

    The registries (``_parameters``, ``_buffers``, ``_modules``, hook dicts, ...) are copied one
    level deep so the old and new module do not share mutable containers, while the tensors
    inside them are the very same objects.
    """
    twin = object.__new__(cls)
    twin.__dict__.update(
        {
            key: value.copy() if isinstance(value, dict) else value
            for key, value in vars(module).items()
        }
    )
    return twin


def convert(model: nn.Module, to: Literal["custom", "builtin"] = "custom") -> nn.Module:
    """Replace every supported layer of ``model`` by its ``to`` twin, in place, and return it.

    Layers are matched by exact type, so user subclasses and unsupported layers are left alone;
    a module that appears several times in the tree is swapped once and stays shared. Returns
    a new object only when ``model`` itself is a supported layer.
    """
    if to not in TARGETS:
        raise ValueError(f"convert(to=...) must be one of {TARGETS}, got {to!r}.")
    table = BUILTIN_TO_CUSTOM if to == "custom" else CUSTOM_TO_BUILTIN
    swapped: dict[int, nn.Module] = {}

    def visit(module: nn.Module) -> nn.Module:
        if id(module) in swapped:
            return swapped[id(module)]
        target = table.get(type(module))
        new = _twin(module, target) if target is not None else module
        swapped[id(module)] = new
        for name, child in list(new._modules.items()):
            if child is not None:
                new._modules[name] = visit(child)
        return new

    return visit(model)
