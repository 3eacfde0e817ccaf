"""Pick the layer family a model is built from: one config value, ``model.impl``."""

from __future__ import annotations

from types import ModuleType

import torch.nn as nn

IMPLS = ("custom", "builtin")


def get_namespace(impl: str) -> ModuleType:
    """Return the module whose ``Conv2d``, ``Linear``, ... a model should use.

    Models are written once against this namespace, so ``custom`` and ``builtin`` networks have
    identical structure and ``state_dict`` keys and weights move between them unchanged.
    """
    if impl == "builtin":
        return nn
    if impl == "custom":
        import cnnlab.layers as custom

        return custom
    raise ValueError(f"model.impl must be one of {IMPLS}, got {impl!r}; e.g. `model.impl=custom`.")
