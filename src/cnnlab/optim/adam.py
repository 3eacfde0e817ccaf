"""Adam and AdamW, written out (``torch.optim.Adam``/``AdamW``'s rules, arguments and state).

Symbols (the article's θ, η, L; Adam's own β₁, β₂, ε)::

    g_t  = ∇L(θ_{t-1})                         (-∇L(θ_{t-1}) when maximize)
    g_t ← g_t + λ θ_{t-1}                       Adam: weight decay as an L2 gradient
    θ_{t-1} ← (1 - η λ) θ_{t-1}                 AdamW: decoupled, the weights shrink directly
    m_t  = β₁ m_{t-1} + (1 - β₁) g_t            first moment  ("exp_avg")
    v_t  = β₂ v_{t-1} + (1 - β₂) g_t²           second moment ("exp_avg_sq")
    v̂_t  = max(v̂_{t-1}, v_t)                    amsgrad only  ("max_exp_avg_sq"), used for v_t
    m̂_t  = m_t / (1 - β₁ᵗ),   v̂_t = v_t / (1 - β₂ᵗ)   bias corrections (t = "step")
    θ_t  = θ_{t-1} - η m̂_t / (√v̂_t + ε)

computed as torch does, ``θ -= (η / (1 - β₁ᵗ)) · m_t / (√v_t / √(1 - β₂ᵗ) + ε)``, so the two
agree to the last bit.
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


class Adam(HandWritten):
    """Adam: momentum on the gradient (m) over an RMS of recent gradients (v), bias-corrected::

        m_t = β₁ m_{t-1} + (1 - β₁) g_t
        v_t = β₂ v_{t-1} + (1 - β₂) g_t²
        θ_t = θ_{t-1} - η · m_t / (1 - β₁ᵗ) / (√(v_t / (1 - β₂ᵗ)) + ε)

    ``decoupled_weight_decay=True`` makes it AdamW. State per parameter: ``step`` (a float
    tensor on the CPU, as torch keeps it), ``exp_avg``, ``exp_avg_sq`` (+ ``max_exp_avg_sq``).
    """

    namesake = torch.optim.Adam

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        refuse_flags(
            type(self).__name__, fused=fused, differentiable=differentiable, capturable=capturable
        )
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": (scalar(betas[0]), scalar(betas[1])),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _state(self, p: Tensor, amsgrad: bool) -> dict[str, Tensor]:
        """A parameter's state, created on its first step: t = 0, m_0 = v_0 (= v̂_0) = 0."""
        state = self.state[p]
        if not state:
            state["step"] = new_step()
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _update(self, group: dict[str, Any]) -> None:
        params = params_with_grad(type(self).__name__, group)
        if not params:
            return
        lr, (beta1, beta2) = scalar(group["lr"]), map(scalar, group["betas"])
        eps, weight_decay, amsgrad = group["eps"], group["weight_decay"], group["amsgrad"]
        states = [self._state(p, amsgrad) for p in params]
        for p, state in by_device_and_dtype([params, states]):
            m = [s["exp_avg"] for s in state]
            v = [s["exp_avg_sq"] for s in state]
            steps = [s["step"] for s in state]
            torch._foreach_add_(steps, 1)  # t ← t + 1
            g = signed_grads(p, group["maximize"])
            if group["decoupled_weight_decay"]:
                if weight_decay != 0:
                    torch._foreach_mul_(p, 1 - lr * weight_decay)  # θ ← (1 - ηλ) θ
            else:
                g = with_weight_decay(g, p, weight_decay, owned=group["maximize"])
            torch._foreach_lerp_(m, g, 1 - beta1)  # m ← β₁ m + (1 - β₁) g
            torch._foreach_mul_(v, beta2)  # v ← β₂ v + (1 - β₂) g²
            torch._foreach_addcmul_(v, g, g, value=1 - beta2)
            if amsgrad:
                v_max = [s["max_exp_avg_sq"] for s in state]
                torch._foreach_maximum_(v_max, v)  # v̂ ← max(v̂, v)
                v = v_max
            t = [s.item() for s in steps]
            step_size = [-(lr / (1 - beta1**k)) for k in t]  # -η / (1 - β₁ᵗ)
            bias_correction2_sqrt = [(1 - beta2**k) ** 0.5 for k in t]  # √(1 - β₂ᵗ)
            denom = torch._foreach_sqrt(v)  # √v / √(1 - β₂ᵗ) + ε
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(p, m, denom, step_size)  # θ ← θ - η m̂ / (√v̂ + ε)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter): Adam whose weight decay shrinks θ directly instead of
    entering the moments, ``θ ← (1 - η λ) θ`` before the Adam step; default λ = 1e-2.

    ``torch.optim.AdamW``'s arguments, defaults and state; ``decoupled_weight_decay`` stays
    True whatever a loaded state dict says, as in torch.
    """

    namesake = torch.optim.AdamW

    def __init__(
        self,
        params: Any,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
