"""Which objects a config that came with a checkpoint may build: cnnlab's own and a few more.

``torch.load(weights_only=True)`` only makes *unpickling* safe. cnnlab then rebuilds the run
from ``checkpoint["cnnlab_config"]`` with Hydra's ``instantiate``, which calls whatever a
``_target_`` names -- ``{_target_: pathlib.Path.write_text, ...}`` writes a file. So a stored
config is treated as data: before anything is built, the whole tree is walked and every
``_target_`` must name a class from the allow-list below; interpolations (``${...}``) are
refused too, because resolvers can read the environment and a config that cnnlab-train wrote is
already resolved. One refusal stops the load before any object exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cnnlab.training.errors import UserError


@dataclass(frozen=True)
class Allowed:
    """Targets spelled ``prefix...`` that resolve to a class defined in a ``module...`` module
    and, when ``base`` ("module:Class") is set, subclassing it."""

    prefix: str
    module: str
    base: str | None = None


ALLOWED: tuple[Allowed, ...] = (
    Allowed("cnnlab.", "cnnlab."),
    Allowed("torch.optim.lr_scheduler.", "torch.optim.", "torch.optim.lr_scheduler:LRScheduler"),
    Allowed("torch.optim.", "torch.optim.", "torch.optim:Optimizer"),
    Allowed("torch.nn.", "torch.nn.", "torch.nn.modules.loss:_Loss"),
    Allowed(
        "lightning.pytorch.loggers.",
        "lightning.pytorch.loggers.",
        "lightning.pytorch.loggers:Logger",
    ),
    Allowed(
        "lightning.pytorch.callbacks.",
        "lightning.pytorch.callbacks.",
        "lightning.pytorch.callbacks:Callback",
    ),
    Allowed("lightning.pytorch.Trainer", "lightning.pytorch.trainer.", "lightning.pytorch:Trainer"),
)


class UnsafeConfigError(UserError):
    """A stored config names something cnnlab does not build from untrusted input."""


def _walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key, value) of a plain dict/list tree, containers included."""
    yield key, node
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _walk(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]")


def _import(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def target_problem(target: Any) -> str | None:
    """Why ``target`` may not be built (None when it may).

    The dotted path is checked before anything is imported, then the object it resolves to:
    it must be a class whose own module is under the same prefix, so a path that walks through
    an imported module (``cnnlab.paths.os.system``) is refused as well.
    """
    if not isinstance(target, str):
        return f"_target_ must be a dotted class path, got {type(target).__name__}"
    rule = next((r for r in ALLOWED if target.startswith(r.prefix)), None)
    if rule is not None and not rule.prefix.endswith(".") and target != rule.prefix:
        rule = None  # an exact name (the Trainer), not a package
    if rule is None:
        return f"{target} is not on cnnlab's allow-list"
    from hydra._internal.utils import _locate  # the very lookup instantiate() uses

    try:
        obj = _locate(target)
    except Exception:
        return f"{target} cannot be imported"
    if not isinstance(obj, type):
        return f"{target} is not a class (a {type(obj).__name__})"
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith(rule.module):
        return f"{target} resolves to {module}.{obj.__qualname__}, outside the allow-list"
    if rule.base is not None and not issubclass(obj, _import(rule.base)):
        return f"{target} is not a {rule.base.split(':')[1].lstrip('_')} class"
    return None


def check_config(config: Any, source: str) -> None:
    """Raise :class:`UnsafeConfigError` unless every ``_target_`` in ``config`` is allowed.

    ``config`` is the plain dict stored in a checkpoint; ``source`` names the file in the
    message. Nested targets (inside ``_args_``, lists, other targets' arguments) count too.
    """
    for key, value in _walk(config):
        if isinstance(value, str) and "${" in value:
            raise UnsafeConfigError(
                f"{source}: refused to load it: its config holds an interpolation at {key} "
                f"({value!r}); configs written by cnnlab-train are resolved, so it was edited "
                "by hand. Nothing was built."
            )
        if isinstance(value, dict) and "_target_" in value:
            problem = target_problem(value["_target_"])
            if problem:
                where = f"{key}._target_" if key else "_target_"
                raise UnsafeConfigError(
                    f"{source}: refused to load it: {where}: {problem} (cnnlab builds only "
                    "cnnlab.*, torch.optim.*, torch.nn losses and Lightning's Trainer, loggers "
                    "and callbacks from a checkpoint). Nothing was built."
                )
