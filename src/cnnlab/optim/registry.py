"""Which hand-written optimizer stands for which ``torch.optim`` one, and how a config picks.

``OPTIMIZERS`` is the one list: each entry names the config (``conf/optimizer/<name>.yaml``),
the hand-written class, its torch.optim namesake and the namesake arguments that make it the
same rule (``Momentum`` is ``torch.optim.SGD(momentum=0.9)``). The parity tests, the benchmark
and ``optimizer.impl`` all derive from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from cnnlab.optim.adam import Adam, AdamW
from cnnlab.optim.rmsprop import RMSProp
from cnnlab.optim.sgd import GD, SGD, Momentum, Nesterov

#: ``optimizer.impl`` values: the update written out here, or torch.optim's own
IMPLS = ("custom", "builtin")


@dataclass(frozen=True)
class Twin:
    name: str
    custom: type[torch.optim.Optimizer]
    builtin: type[torch.optim.Optimizer]
    #: arguments that make ``builtin`` behave as ``custom`` does with its defaults
    builtin_options: Mapping[str, Any] = field(default_factory=dict)


OPTIMIZERS: tuple[Twin, ...] = (
    Twin("gd", GD, torch.optim.SGD),
    Twin("sgd", SGD, torch.optim.SGD),
    Twin("momentum", Momentum, torch.optim.SGD, {"momentum": 0.9}),
    Twin("nesterov", Nesterov, torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    Twin("rmsprop", RMSProp, torch.optim.RMSprop),
    Twin("adam", Adam, torch.optim.Adam),
    Twin("adamw", AdamW, torch.optim.AdamW),
)


def _path(cls: type) -> str:
    module = cls.__module__
    public = "cnnlab.optim" if module.startswith("cnnlab.optim") else "torch.optim"
    return f"{public}.{cls.__name__}"


def _sgd_flavour(config: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """The SGD-family class whose name says what this config does (the update is the same)."""
    if config.get("full_batch"):
        return GD
    if config.get("nesterov"):
        return Nesterov
    if config.get("momentum"):
        return Momentum
    return SGD


def optimizer_class(config: Mapping[str, Any]) -> str:
    """The ``_target_`` an optimizer config builds for its ``impl`` (default ``builtin``).

    Configs name the torch.optim class; ``impl: custom`` swaps in the hand-written twin. A
    ``cnnlab.optim`` target is already hand-written and only goes with ``impl: custom``.
    Raises ``ValueError`` with the fix in one line.
    """
    target, impl = str(config.get("_target_")), config.get("impl", "builtin")
    if impl not in IMPLS:
        raise ValueError(
            f"optimizer.impl={impl!r} is not an optimizer family: use optimizer.impl=custom "
            "(cnnlab.optim, the update written out) or optimizer.impl=builtin (torch.optim)."
        )
    if target.startswith("cnnlab.optim."):
        if impl == "builtin":
            raise ValueError(
                f"optimizer._target_={target} is hand-written: set optimizer.impl=custom, or "
                "name its torch.optim namesake for optimizer.impl=builtin."
            )
        return target
    if impl == "builtin":
        return target
    twins = [t for t in OPTIMIZERS if _path(t.builtin) == target]
    if not twins:
        known = ", ".join(dict.fromkeys(_path(t.builtin) for t in OPTIMIZERS))
        raise ValueError(
            f"optimizer.impl=custom: cnnlab.optim has no hand-written {target} (it has {known}); "
            "use optimizer.impl=builtin for this optimizer."
        )
    if twins[0].builtin is torch.optim.SGD:
        return _path(_sgd_flavour(config))
    return _path(twins[0].custom)
