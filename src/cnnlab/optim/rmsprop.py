"""RMSProp, written out (``torch.optim.RMSprop``'s rule, arguments and state).

Symbols (the article's θ, η, L; RMSProp's smoothing constant α and ε)::

    g_t  = ∇L(θ_{t-1}) + λ θ_{t-1}              (-∇L when maximize; λ = weight_decay)
    s_t  = α s_{t-1} + (1 - α) g_t²              mean square of recent gradients ("square_avg")
    ḡ_t  = α ḡ_{t-1} + (1 - α) g_t               centered only: their mean ("grad_avg")
    r_t  = √(s_t - ḡ_t²) + ε   (centered)   or   √s_t + ε
    b_t  = μ b_{t-1} + g_t / r_t                 momentum μ > 0 only ("momentum_buffer")
    θ_t  = θ_{t-1} - η b_t     (μ > 0)       or   θ_{t-1} - η g_t / r_t

Each weight's step is scaled by the root of its own recent squared gradients, so steep and
flat directions move alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnnlab.optim._base import (
    HandWritten,
    by_device_and_dtype,
    new_step,
    params_with_grad,
    refuse_flags,
    scalar,
    signed_grads,
    with_weight_decay,
)


class RMSProp(HandWritten):
    """RMSProp (Tieleman & Hinton), optionally centered and with momentum::

        s_t = α s_{t-1} + (1 - α) g_t²
        θ_t = θ_{t-1} - η g_t / (√s_t + ε)

    ``torch.optim.RMSprop``'s arguments and defaults (η = 1e-2, α = 0.99) and its state:
    ``step`` (a float tensor on the CPU), ``square_avg`` (+ ``momentum_buffer``, ``grad_avg``).
    """

    namesake = torch.optim.RMSprop

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0,
        momentum: float = 0,
        centered: bool = False,
        capturable: bool = False,
        foreach: bool | None = None,
        maximize: bool = False,
        differentiable: bool = False,
    ) -> None:
        refuse_flags(type(self).__name__, differentiable=differentiable, capturable=capturable)
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not alpha >= 0.0:
            raise ValueError(f"Invalid alpha value: {alpha}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "alpha": alpha,
            "eps": eps,
            "centered": centered,
            "weight_decay": weight_decay,
            "capturable": capturable,
            "foreach": foreach,
            "maximize": maximize,
            "differentiable": differentiable,
        }
        super().__init__(params, defaults)

    def _state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """A parameter's state, created on its first step: t = 0, s_0 = b_0 = ḡ_0 = 0."""
        state = self.state[p]
        if not state:
            state["step"] = new_step()
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, group: dict[str, Any]) -> None:
        params = params_with_grad(type(self).__name__, group)
        if not params:
            return
        lr, alpha, eps = scalar(group["lr"]), group["alpha"], group["eps"]
        momentum, maximize = group["momentum"], group["maximize"]
        states = [self._state(p, group) for p in params]
        for p, state in by_device_and_dtype([params, states]):
            torch._foreach_add_([s["step"] for s in state], 1)  # t ← t + 1
            g = signed_grads(p, maximize)
            g = with_weight_decay(g, p, group["weight_decay"], owned=maximize)
            s = [st["square_avg"] for st in state]
            torch._foreach_mul_(s, alpha)  # s ← α s + (1 - α) g²
            torch._foreach_addcmul_(s, g, g, value=1 - alpha)
            if group["centered"]:
                g_mean = [st["grad_avg"] for st in state]
                torch._foreach_lerp_(g_mean, g, 1 - alpha)  # ḡ ← α ḡ + (1 - α) g
                r = torch._foreach_addcmul(s, g_mean, g_mean, value=-1)  # r = √(s - ḡ²) + ε
                torch._foreach_sqrt_(r)
            else:
                r = torch._foreach_sqrt(s)  # r = √s + ε
            torch._foreach_add_(r, eps)
            if momentum > 0:
                b = [st["momentum_buffer"] for st in state]
                torch._foreach_mul_(b, momentum)  # b ← μ b + g / r
                torch._foreach_addcdiv_(b, g, r)
                torch._foreach_add_(p, b, alpha=-lr)  # θ ← θ - η b
            else:
                torch._foreach_addcdiv_(p, g, r, value=-lr)  # θ ← θ - η g / r


#: torch's spelling, for drop-in use
RMSprop = RMSProp
