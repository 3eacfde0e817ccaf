"""Gradient descent and its momentum variants, written out (``torch.optim.SGD``'s rules).

Symbols (the article's: θ parameters, η learning rate, L the loss, ∇L(θ) its gradient)::

    g_t = ∇L(θ_{t-1})                     (-∇L(θ_{t-1}) when maximize)
    g_t ← g_t + λ θ_{t-1}                  weight decay λ (the L2 penalty's gradient)
    v_t = g_t                              first step          } momentum μ, dampening τ;
    v_t = μ v_{t-1} + (1 - τ) g_t          later steps         } v = "momentum_buffer"
    d_t = g_t                              μ = 0: plain gradient descent
    d_t = v_t                              heavy ball (动量法)
    d_t = g_t + μ v_t                      Nesterov: the gradient plus a look-ahead along v_t
    θ_t = θ_{t-1} - η d_t

``GD``, ``SGD``, ``Momentum`` and ``Nesterov`` run this one rule; they differ in their defaults
and in what they promise. What makes gradient descent "full batch" is the gradient it is given
(``optimizer=gd`` accumulates every train batch before one step), not the update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnnlab.optim._base import (
    HandWritten,
    by_device_and_dtype,
    params_with_grad,
    refuse_flags,
    scalar,
    signed_grads,
    with_weight_decay,
)


class SGD(HandWritten):
    """Stochastic gradient descent (随机梯度下降), optionally with momentum; ``torch.optim.SGD``'s
    arguments, defaults, param-group keys and state (``momentum_buffer``)::

        g_t = ±∇L(θ_{t-1}) + λ θ_{t-1}
        v_t = μ v_{t-1} + (1 - τ) g_t        (v_1 = g_1; only when μ ≠ 0)
        θ_t = θ_{t-1} - η d_t,   d_t = g_t (μ = 0) | v_t | g_t + μ v_t (nesterov)
    """

    namesake = torch.optim.SGD

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        name = type(self).__name__
        refuse_flags(name, fused=fused, differentiable=differentiable)
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        super().__init__(params, defaults)

    def _update(self, group: dict[str, Any]) -> None:
        params = params_with_grad(type(self).__name__, group)
        if not params:
            return
        lr, momentum = scalar(group["lr"]), group["momentum"]
        dampening, nesterov = group["dampening"], group["nesterov"]
        maximize, weight_decay = group["maximize"], group["weight_decay"]
        # state only where torch.optim.SGD keeps it (momentum ≠ 0), so state dicts match
        buffers = [self.state[p].get("momentum_buffer") if momentum else None for p in params]
        for p, v in by_device_and_dtype([params, buffers]):
            g = signed_grads(p, maximize)
            g = with_weight_decay(g, p, weight_decay, owned=maximize)
            if momentum != 0:
                v = self._momentum_buffers(p, v, g, momentum, dampening)
                d = v
                if nesterov:  # d = g + μ v, in place only where g is not the weights' own .grad
                    if maximize or weight_decay != 0:
                        torch._foreach_add_(g, v, alpha=momentum)
                        d = g
                    else:
                        d = torch._foreach_add(g, v, alpha=momentum)
            else:
                d = g
            torch._foreach_add_(p, d, alpha=-lr)  # θ ← θ - η d

    def _momentum_buffers(
        self,
        params: list[Tensor],
        buffers: list[Tensor | None],
        grads: list[Tensor],
        momentum: float,
        dampening: float,
    ) -> list[Tensor]:
        """v_t = μ v_{t-1} + (1 - τ) g_t, or v_1 = g_1 for a parameter's first step."""
        old = [i for i, v in enumerate(buffers) if v is not None]
        if old:
            kept = [buffers[i] for i in old]
            torch._foreach_mul_(kept, momentum)
            torch._foreach_add_(kept, [grads[i] for i in old], alpha=1 - dampening)
        out: list[Tensor] = []
        for p, v, g in zip(params, buffers, grads, strict=True):
            if v is None:
                v = self.state[p]["momentum_buffer"] = g.detach().clone()
            out.append(v)
        return out


class GD(SGD):
    """Gradient descent (梯度下降): ``θ_t = θ_{t-1} - η ∇L(θ_{t-1})`` on the gradient of the whole
    training set, with ``SGD``'s arguments (weight decay λ, momentum μ if wanted).

    The rule is SGD's; "full batch" is a property of the gradient it is fed: ``optimizer=gd``
    makes the trainer accumulate the mean gradient over every train batch and step once per
    epoch. Its torch.optim namesake is ``torch.optim.SGD``.
    """


class Momentum(SGD):
    """Heavy-ball momentum (动量法), SGD with ``momentum`` (default μ = 0.9)::

        v_t = μ v_{t-1} + (1 - τ) g_t        (v_1 = g_1)
        θ_t = θ_{t-1} - η v_t

    ``torch.optim.SGD(momentum=μ)``'s arguments and state; ``nesterov=True`` is refused (use
    ``Nesterov``) and so is μ = 0 (that is ``SGD``).
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if nesterov:
            raise ValueError("cnnlab.optim.Momentum is heavy ball: for nesterov=True use Nesterov")
        if momentum <= 0:
            raise ValueError(f"cnnlab.optim.Momentum needs momentum > 0, got {momentum}; use SGD")
        super().__init__(
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            False,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )


class Nesterov(SGD):
    """Nesterov momentum, SGD with ``nesterov=True`` (default μ = 0.9, no dampening)::

        v_t = μ v_{t-1} + g_t                (v_1 = g_1)
        θ_t = θ_{t-1} - η (g_t + μ v_t)

    The gradient step plus a look-ahead along the velocity: the form of Sutskever et al. (2013)
    that torch.optim.SGD(nesterov=True) uses, with its state.
    """

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        momentum: float = 0.9,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = True,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if not nesterov:
            raise ValueError("cnnlab.optim.Nesterov with nesterov=False is Momentum: use that")
        super().__init__(
            params,
            lr,
            momentum,
            dampening,
            weight_decay,
            True,
            maximize=maximize,
            foreach=foreach,
            differentiable=differentiable,
            fused=fused,
        )
