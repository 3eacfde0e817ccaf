"""Per-layer numerical agreement: forward outputs, grad_input, grad_weight and grad_bias.

Every leaf layer (and the loss) gets a forward pre-hook that hands the layer a private clone of
its input with a gradient hook on it. The clone's gradient is exactly that layer's grad_input,
even when the input tensor also feeds a residual shortcut, and an in-place ReLU only modifies
the clone. (``register_full_backward_hook`` would refuse in-place ReLUs.)
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cnnlab.compare.twins import freeze_dropout, leaf_modules


@dataclass
class Trace:
    """What one training step produced, keyed by layer call (``name`` or ``name#k`` for reuse)."""

    layer_types: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_params: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _call_key(calls: Counter, name: str) -> str:
    """A module applied twice in one forward (a shared ReLU) gets one key per call."""
    calls[name] += 1
    return name if calls[name] == 1 else f"{name}#{calls[name]}"


def trace_step(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> Trace:
    """One forward + backward in train mode (dropout frozen), recording every layer's tensors."""
    trace = Trace()
    calls: Counter = Counter()
    current: dict[int, str] = {}  # id(module) -> key of its call in progress
    layers = [*leaf_modules(model), ("loss", loss_fn)]

    def pre_hook(name):
        def hook(module, args):
            key = _call_key(calls, name)
            trace.layer_types[key] = type(module).__name__
            current[id(module)] = key
            x = args[0]
            if not (torch.is_tensor(x) and x.requires_grad):
                return None
            x = x.clone()
            x.register_hook(lambda g: trace.grad_inputs.__setitem__(key, g.detach().clone()))
            return (x, *args[1:])

        return hook

    def post_hook(module, _args, output):
        trace.outputs[current[id(module)]] = output.detach().clone()

    model.train()
    list(freeze_dropout(model))
    model.zero_grad(set_to_none=True)
    handles = []
    for name, module in layers:
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook))
    try:
        inputs = images.detach().clone().requires_grad_(True)
        with autocast():
            loss = loss_fn(model(inputs), labels)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    for name, module in leaf_modules(model):
        grads = {p: t.grad.detach().clone() for p, t in module.named_parameters(recurse=False)}
        if grads:
            trace.grad_params[name] = {p: g for p, g in grads.items() if g is not None}
    return trace


def errors(candidate: torch.Tensor | None, reference: torch.Tensor | None) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / max |b|), computed in float64.

    The relative error is normalised by the reference's largest magnitude rather than
    element-wise, which would explode on the many exact zeros after ReLU.
    """
    if candidate is None or reference is None:
        return float("nan"), float("nan")
    if candidate.shape != reference.shape:
        raise ValueError(
            f"custom and built-in tensors differ in shape: {tuple(candidate.shape)} vs "
            f"{tuple(reference.shape)}; the two models are not the same architecture."
        )
    a, b = candidate.detach().double(), reference.detach().double()
    max_abs = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return max_abs, max_abs / scale if scale > 0 else max_abs


ERROR_COLUMNS = (
    "fwd_abs",
    "fwd_rel",
    "grad_in_abs",
    "grad_in_rel",
    "grad_w_abs",
    "grad_w_rel",
    "grad_b_abs",
    "grad_b_rel",
)


def compare_traces(custom: Trace, builtin: Trace) -> list[dict]:
    """One row per layer call: the errors of custom against built-in (the reference)."""
    if list(custom.layer_types) != list(builtin.layer_types):
        raise ValueError(
            "custom and built-in models called different layers; convert() should keep the "
            f"structure: {list(custom.layer_types)} vs {list(builtin.layer_types)}"
        )
    rows = []
    for key, layer_type in builtin.layer_types.items():
        name = key.split("#")[0]
        params_c = custom.grad_params.get(name, {}) if key == name else {}
        params_b = builtin.grad_params.get(name, {}) if key == name else {}
        row = {"layer": key, "type": layer_type}
        pairs = (
            ("fwd", custom.outputs.get(key), builtin.outputs.get(key)),
            ("grad_in", custom.grad_inputs.get(key), builtin.grad_inputs.get(key)),
            ("grad_w", params_c.get("weight"), params_b.get("weight")),
            ("grad_b", params_c.get("bias"), params_b.get("bias")),
        )
        for prefix, a, b in pairs:
            row[f"{prefix}_abs"], row[f"{prefix}_rel"] = errors(a, b)
        rows.append(row)
    return rows
