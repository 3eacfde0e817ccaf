"""What every hand-written optimizer shares: the flags it refuses, and gathering its tensors.

The update rules themselves live in ``sgd.py``, ``rmsprop.py`` and ``adam.py``. Each step works
on whole lists of tensors with ``torch._foreach_*`` ops (one call per op for all parameters of
a device and dtype, a multi-tensor kernel on a GPU), so it costs what ``torch.optim``'s
``foreach`` path costs without calling any of ``torch.optim``'s update functions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def scalar(value: float | Tensor) -> float:
    """A learning rate or beta given as a 1-element tensor, as the Python number it holds."""
    return float(value.item()) if isinstance(value, Tensor) else float(value)


def step_dtype() -> torch.dtype:
    """The dtype torch.optim gives its ``step`` counters, so state dicts move both ways."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def new_step() -> Tensor:
    """A ``step`` counter as torch.optim keeps it when neither capturable nor fused: on the CPU."""
    return torch.zeros((), dtype=step_dtype())


def refuse_flags(
    name: str,
    *,
    fused: bool | None = None,
    differentiable: bool = False,
    capturable: bool = False,
) -> None:
    """Refuse the flags that would mean someone else's update code or a different contract.

    ``foreach`` is accepted with any value: every step here is written with ``_foreach_*`` ops,
    and the flag only picked a speed path in torch.optim, never a different result.
    """
    if fused:
        raise ValueError(
            f"cnnlab.optim.{name}: fused=True would run torch's fused kernel instead of the "
            f"update written out here; drop it, or use torch.optim.{name} (optimizer.impl=builtin)."
        )
    if differentiable:
        raise ValueError(
            f"cnnlab.optim.{name}: differentiable=True (gradients through the update) is not "
            f"supported: the step updates in place under no_grad; use torch.optim.{name}."
        )
    if capturable:
        raise ValueError(
            f"cnnlab.optim.{name}: capturable=True (CUDA-graph capture of the step) is not "
            f"supported: the bias corrections are computed on the host; use torch.optim.{name}."
        )


def check_group_flags(name: str, group: dict[str, Any]) -> None:
    """The same refusal for a param group, e.g. one loaded from a torch.optim state dict."""
    refuse_flags(
        name,
        fused=group.get("fused"),
        differentiable=group.get("differentiable", False),
        capturable=group.get("capturable", False),
    )


def params_with_grad(name: str, group: dict[str, Any]) -> list[Tensor]:
    """The group's parameters that received a gradient this step (the others are left alone)."""
    params = [p for p in group["params"] if p.grad is not None]
    for p in params:
        if p.grad.is_sparse:
            raise RuntimeError(
                f"cnnlab.optim.{name} does not take sparse gradients; use a dense embedding "
                "or torch.optim (optimizer.impl=builtin)."
            )
        if torch.is_complex(p):
            raise RuntimeError(
                f"cnnlab.optim.{name} does not take complex parameters; use torch.optim "
                "(optimizer.impl=builtin)."
            )
    return params


def by_device_and_dtype(
    columns: Sequence[Sequence[Any]],
) -> Iterable[list[list[Any]]]:
    """Split parallel lists (params, grads, states, ...) into runs of one device and dtype.

    ``_foreach_*`` ops take tensors of one device and dtype at a time; the key is the first
    column's (the parameters').
    """
    rows: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for index, tensor in enumerate(columns[0]):
        rows[(tensor.device, tensor.dtype)].append(index)
    for indices in rows.values():
        yield [[column[i] for i in indices] for column in columns]


def signed_grads(params: list[Tensor], maximize: bool) -> list[Tensor]:
    """g_t = ∇L(θ) (or -∇L(θ) when maximising); new tensors only when they must differ."""
    grads = [p.grad for p in params]
    return torch._foreach_neg(grads) if maximize else grads


def with_weight_decay(
    grads: list[Tensor], params: list[Tensor], weight_decay: float, owned: bool
) -> list[Tensor]:
    """g_t ← g_t + λ θ (the L2 penalty's gradient), in place only on tensors this step owns."""
    if weight_decay == 0:
        return grads
    if owned:
        torch._foreach_add_(grads, params, alpha=weight_decay)
        return grads
    return torch._foreach_add(grads, params, alpha=weight_decay)


class HandWritten(Optimizer):
    """Base of the cnnlab optimizers: ``step`` calls ``_update(group)`` for each param group."""

    #: the torch.optim class this one mirrors (constructor, defaults, state keys)
    namesake: type[Optimizer]

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for group in state_dict.get("param_groups", []):
            check_group_flags(type(self).__name__, group)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update(group)
        return loss

    def _update(self, group: dict[str, Any]) -> None:
        raise NotImplementedError
