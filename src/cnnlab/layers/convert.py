"""Swap a model's layers between the hand-written and the built-in family, weights untouched.

Every custom layer holds exactly the instance state of its ``torch.nn`` twin (the contract in
docs/architecture.md), so swapping is a class change that keeps the very Parameter and buffer
objects (see :mod:`cnnlab.layers._swap`): device, dtype, ``requires_grad``, optimizer references
and ``state_dict`` bits survive a round trip. The pairs come from the op registry.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn

from cnnlab.layers._swap import swap_classes
from cnnlab.layers.ops import OPS

TARGETS = ("custom", "builtin")

CUSTOM_TO_BUILTIN: dict[type[nn.Module], type[nn.Module]] = {op.custom: op.builtin for op in OPS}
BUILTIN_TO_CUSTOM = {builtin: custom for custom, builtin in CUSTOM_TO_BUILTIN.items()}


def convert(model: nn.Module, to: Literal["custom", "builtin"] = "custom") -> nn.Module:
    """Replace every supported layer of ``model`` by its ``to`` twin, in place, and return it.

    Layers are matched by exact type, so user subclasses and unsupported layers are left alone;
    a module that appears several times in the tree is swapped once and stays shared. Returns
    a new object only when ``model`` itself is a supported layer.
    """
    if to not in TARGETS:
        raise ValueError(f"convert(to=...) must be one of {TARGETS}, got {to!r}.")
    table = BUILTIN_TO_CUSTOM if to == "custom" else CUSTOM_TO_BUILTIN
    return swap_classes(model, lambda module: table.get(type(module)))[0]
