"""Cross-entropy, negative log-likelihood and mean-squared-error losses with explicit backward.

Classification losses are written in terms of a per-class target weight ``a[i, c]``: the
(smoothed, one-hot or soft) target times the class weight, zero for ignored samples. Then
``loss_i = -sum_c a_ic * log p_ic`` and the cross-entropy gradient is
``softmax_i * sum_c a_ic - a_i``, which is the familiar ``softmax - target`` when the target
sums to one and no weights are given.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn import _reduction

from cnnlab.functional._utils import (
    assert_on_device,
    cast_like_builtin_fp32,
    check_same_device,
    check_same_dtype,
    first_order_only,
    fresh_outputs,
    host_checks_allowed,
)
from cnnlab.functional.activation import log_softmax_values

REDUCTIONS = ("none", "mean", "sum")


def _reduce(loss: torch.Tensor, reduction: str, denominator: torch.Tensor | float) -> torch.Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    return total / denominator if reduction == "mean" else total


def _grad_per_element(
    grad: torch.Tensor,
    reduction: str,
    denominator: torch.Tensor | float,
    shape: tuple[int, ...] | torch.Size,
) -> torch.Tensor:
    """The upstream gradient of each per-element loss, undoing :func:`_reduce`."""
    if reduction == "none":
        return grad
    if reduction == "mean":
        # An all-ignored batch has a 0/0 = NaN loss but, as in ATen, a zero gradient.
        grad = torch.where(torch.as_tensor(denominator) == 0, 0.0, grad / denominator)
    return grad.expand(shape)


def _reduction_arg(op: str, reduction: str, size_average, reduce) -> str:
    if size_average is not None or reduce is not None:
        reduction = _reduction.legacy_get_string(size_average, reduce)
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


class _ClassTarget:
    """Class-index or class-probability targets, normalised to batched (N, C, ...) layout."""

    def __init__(self, target, weight, ignore_index: int, smoothing: float, num_classes: int):
        self.target, self.weight = target, weight
        self.ignore_index, self.smoothing, self.num_classes = ignore_index, smoothing, num_classes
        self.soft = target.is_floating_point()

    def weight_view(self, ndim: int) -> torch.Tensor | None:
        return None if self.weight is None else self.weight.view(1, -1, *([1] * (ndim - 2)))

    def valid(self) -> torch.Tensor:
        return self.target != self.ignore_index

    def safe_index(self) -> torch.Tensor:
        """Class indices with ignored entries replaced by class 0 so they can be gathered."""
        return self.target.masked_fill(~self.valid(), 0)

    def per_class(self, like: torch.Tensor) -> torch.Tensor:
        """``a[i, c]``: smoothed target probability times class weight (0 where ignored)."""
        eps, classes = self.smoothing, self.num_classes
        if self.soft:
            a = self.target * (1 - eps) + eps / classes if eps > 0 else self.target.to(like.dtype)
        else:
            a = torch.full_like(like, eps / classes)
            a.scatter_(1, self.safe_index().unsqueeze(1), 1 - eps + eps / classes)
            a.mul_(self.valid().unsqueeze(1))
        weight = self.weight_view(like.dim())
        return a if weight is None else a * weight

    def denominator(self, loss: torch.Tensor) -> torch.Tensor | float:
        """What ``mean`` divides by: the summed target weights, as ``nll_loss`` defines it."""
        if self.soft:
            return float(loss.numel())
        valid = self.valid()
        if self.weight is None:
            return valid.sum().to(loss.dtype)
        return (self.weight[self.safe_index()] * valid).sum()

    def loss(self, log_probs: torch.Tensor) -> torch.Tensor:
        """``-sum_c a_ic log p_ic``; gathers the target class so -inf logits elsewhere stay finite."""
        if self.soft:
            return -(self.per_class(log_probs) * log_probs).sum(1)
        index = self.safe_index()
        loss = -log_probs.gather(1, index.unsqueeze(1)).squeeze(1)
        if self.weight is not None:
            loss = loss * self.weight[index]
        if self.smoothing > 0:  # ATen's formula: (1 - eps) * nll + eps / C * sum_c w_c * (-log p_c)
            weight = self.weight_view(log_probs.dim())
            weighted = log_probs if weight is None else log_probs * weight
            loss = (1 - self.smoothing) * loss - self.smoothing / self.num_classes * weighted.sum(1)
        return loss.masked_fill(~self.valid(), 0)


class _CrossEntropy(torch.autograd.Function):
    """Fused log-softmax + NLL; saves the log-probabilities and the (small) target."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, target, weight, ignore_index, reduction, smoothing):
        classes = _ClassTarget(target, weight, ignore_index, smoothing, input.shape[1])
        log_probs = log_softmax_values(input, 1)
        loss = classes.loss(log_probs)
        ctx.denominator = classes.denominator(loss)
        ctx.reduction, ctx.classes_args = reduction, (ignore_index, smoothing, input.shape[1])
        ctx.save_for_backward(log_probs, target, weight)
        return _reduce(loss, reduction, ctx.denominator)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        log_probs, target, weight = ctx.saved_tensors
        classes = _ClassTarget(target, weight, *ctx.classes_args)
        shape = (log_probs.shape[0], *log_probs.shape[2:])
        g = _grad_per_element(grad, ctx.reduction, ctx.denominator, shape).unsqueeze(1)
        a = classes.per_class(log_probs)
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            grad_input = g * (log_probs.exp() * a.sum(1, keepdim=True) - a)
        if ctx.needs_input_grad[1]:  # soft targets: d loss / d target = -(1 - eps) * w * log p
            weighted = classes.weight_view(log_probs.dim())
            weighted = log_probs if weighted is None else log_probs * weighted
            grad_target = -g * (1 - ctx.classes_args[1]) * weighted
        return grad_input, grad_target, None, None, None, None


class _NLLLoss(torch.autograd.Function):
    """``-w[y] * input[y]`` per sample; the gradient is that weight, negated, at ``y``."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, target, weight, ignore_index, reduction):
        classes = _ClassTarget(target, weight, ignore_index, 0.0, input.shape[1])
        loss = classes.loss(input)
        ctx.denominator, ctx.reduction = classes.denominator(loss), reduction
        ctx.ignore_index, ctx.input_shape = ignore_index, input.shape
        ctx.save_for_backward(target, weight)
        return _reduce(loss, reduction, ctx.denominator)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        target, weight = ctx.saved_tensors
        classes = _ClassTarget(target, weight, ctx.ignore_index, 0.0, ctx.input_shape[1])
        shape = (ctx.input_shape[0], *ctx.input_shape[2:])
        g = _grad_per_element(grad, ctx.reduction, ctx.denominator, shape).unsqueeze(1)
        a = classes.per_class(grad.new_empty(ctx.input_shape))
        return -g * a, None, None, None, None


def _check_class_target(op: str, input: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Validate batched (N, C, ...) input against its target, with the shapes in the message."""
    if target.is_floating_point():
        if ignore_index != -100:
            raise ValueError(
                f"{op}: ignore_index is not supported with class-probability (float) targets"
            )
        if target.shape != input.shape:
            raise ValueError(
                f"{op}: class-probability targets must have the input's shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        return
    expected = (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"{op}: expected class-index target of shape {expected} for input of shape "
            f"{tuple(input.shape)} (N, C, ...), got {tuple(target.shape)}"
        )
    if target.dtype in (torch.bool, torch.uint8) or target.is_complex():
        raise TypeError(f"{op}: class-index targets must be int64, got {target.dtype}")
    # A value check: read on the host only where that is free (CPU eager), else on the device.
    classes = input.shape[1]
    valid = f"valid: 0..{classes - 1}, or ignore_index={ignore_index}"
    out_of_range = ((target < 0) | (target >= classes)) & (target != ignore_index)
    if not host_checks_allowed(target):
        assert_on_device(~out_of_range.any(), f"{op}: a target is out of bounds ({valid})")
    elif out_of_range.any():
        bad = target[out_of_range][0].item()
        raise IndexError(f"{op}: target {bad} is out of bounds for {classes} classes ({valid})")


def _prepare_classification(op, input, target, weight, ignore_index):
    """Shared front half of cross_entropy / nll_loss: autocast cast, checks, batching."""
    input, target, weight = cast_like_builtin_fp32(input, target, weight)
    if input.dim() < 1 or not input.is_floating_point():
        raise ValueError(
            f"{op} expected floating-point input of shape (C,), (N, C) or (N, C, d1, ...), "
            f"got {input.dtype} of shape {tuple(input.shape)}"
        )
    check_same_device(op, input, weight=weight)
    check_same_dtype(op, input, weight=weight)
    if target.device != input.device:
        raise ValueError(f"{op}: target is on {target.device} but input is on {input.device}")
    if weight is not None and weight.shape != (input.shape[1 if input.dim() > 1 else 0],):
        raise ValueError(
            f"{op}: weight must hold one value per class, shape "
            f"({input.shape[1 if input.dim() > 1 else 0]},), got {tuple(weight.shape)}"
        )
    unbatched = input.dim() == 1
    if unbatched:
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    _check_class_target(op, input, target, ignore_index)
    return input, target, weight, unbatched


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.cross_entropy`` (index or probability targets)."""
    reduction = _reduction_arg("cross_entropy", reduction, size_average, reduce)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy: label_smoothing must be between 0.0 and 1.0, got {label_smoothing}"
        )
    input, target, weight, unbatched = _prepare_classification(
        "cross_entropy", input, target, weight, ignore_index
    )
    loss = _CrossEntropy.apply(input, target, weight, ignore_index, reduction, label_smoothing)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.nll_loss`` (input holds log-probabilities)."""
    reduction = _reduction_arg("nll_loss", reduction, size_average, reduce)
    input, target, weight, unbatched = _prepare_classification(
        "nll_loss", input, target, weight, ignore_index
    )
    if target.is_floating_point():
        raise TypeError(f"nll_loss expects class-index (int64) targets, got {target.dtype}")
    loss = _NLLLoss.apply(input, target, weight, ignore_index, reduction)
    return loss.squeeze(0) if unbatched and reduction == "none" else loss


class _MSELoss(torch.autograd.Function):
    """``w * (input - target)^2``; saves only the difference (and the optional weight)."""

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, target, weight, reduction):
        diff = input - target
        loss = diff * diff if weight is None else diff * diff * weight
        ctx.denominator = float(loss.numel()) if weight is None else weight.sum()
        ctx.reduction, ctx.shapes = reduction, (input.shape, target.shape)
        ctx.save_for_backward(diff, weight)
        return _reduce(loss, reduction, ctx.denominator)

    @staticmethod
    @first_order_only
    def backward(ctx, grad: torch.Tensor):
        diff, weight = ctx.saved_tensors
        g = _grad_per_element(grad, ctx.reduction, ctx.denominator, diff.shape)
        grad_diff = 2 * g * diff if weight is None else 2 * g * diff * weight
        input_shape, target_shape = ctx.shapes
        grad_input = grad_diff.sum_to_size(input_shape) if ctx.needs_input_grad[0] else None
        grad_target = -grad_diff.sum_to_size(target_shape) if ctx.needs_input_grad[1] else None
        return grad_input, grad_target, None, None


def mse_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.mse_loss`` (incl. its broadcasting and ``weight``)."""
    reduction = _reduction_arg("mse_loss", reduction, size_average, reduce)
    input, target, weight = cast_like_builtin_fp32(input, target, weight)
    if target.device != input.device:
        raise ValueError(f"mse_loss: target is on {target.device} but input is on {input.device}")
    try:
        torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise ValueError(
            f"mse_loss: target of shape {tuple(target.shape)} cannot be broadcast to the input "
            f"shape {tuple(input.shape)}; pass a target of the input's shape"
        ) from None
    if target.shape != input.shape:
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size "
            f"({input.size()}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=2,
        )
    if weight is not None and weight.shape != input.shape:
        raise ValueError(
            f"mse_loss: weight must have the input's shape {tuple(input.shape)}, "
            f"got {tuple(weight.shape)}"
        )
    return _MSELoss.apply(input, target, weight, reduction)
