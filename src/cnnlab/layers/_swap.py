"""Change the class of layers inside a model in place, keeping their very tensors and settings.

The twins this package swaps (custom <-> built-in, BatchNorm <-> SyncBatchNorm) share their
instance state: parameters, buffers, constructor settings, ``training`` flag and hook dicts all
live in the instance ``__dict__``. Swapping therefore means building an instance of the new class
*without* running ``__init__`` (which would re-initialise the weights) and giving it the old
instance's state. The same Parameter and buffer objects are reused, so device, dtype,
``requires_grad``, optimizer references and ``state_dict`` bits survive a round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch.nn as nn


def twin(
    module: nn.Module,
    cls: type[nn.Module],
    set_attrs: Mapping[str, Any] | None = None,
    drop_attrs: Iterable[str] = (),
) -> nn.Module:
    """An instance of ``cls`` holding ``module``'s state, built without re-initialisation.

    The registries (``_parameters``, ``_buffers``, ``_modules``, hook dicts, ...) are copied one
    level deep so the old and new module do not share mutable containers, while the tensors
    inside them are the very same objects. ``set_attrs``/``drop_attrs`` add or remove the plain
    attributes in which ``cls`` differs (e.g. SyncBatchNorm's ``process_group``).
    """
    new = object.__new__(cls)
    state = {
        key: value.copy() if isinstance(value, dict) else value
        for key, value in vars(module).items()
    }
    for key in drop_attrs:
        state.pop(key, None)
    new.__dict__.update(state)
    new.__dict__.update(set_attrs or {})
    return new


def swap_classes(
    model: nn.Module,
    target: Callable[[nn.Module], type[nn.Module] | None],
    set_attrs: Mapping[str, Any] | None = None,
    drop_attrs: Iterable[str] = (),
) -> tuple[nn.Module, list[tuple[nn.Module, nn.Module]]]:
    """Replace, in place, every module of ``model`` for which ``target(module)`` names a class.

    A module that appears several times in the tree is swapped once and stays shared. Returns
    the model (a new object only when ``model`` itself is swapped) and the ``(old, new)`` pairs.
    """
    drop_attrs = tuple(drop_attrs)
    seen: dict[int, nn.Module] = {}
    pairs: list[tuple[nn.Module, nn.Module]] = []

    def visit(module: nn.Module) -> nn.Module:
        if id(module) in seen:
            return seen[id(module)]
        cls = target(module)
        new = module if cls is None else twin(module, cls, set_attrs, drop_attrs)
        if new is not module:
            pairs.append((module, new))
        seen[id(module)] = new
        for name, child in list(new._modules.items()):
            if child is not None:
                new._modules[name] = visit(child)
        return new

    return visit(model), pairs
