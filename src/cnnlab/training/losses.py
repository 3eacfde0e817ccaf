"""Classification losses for either layer family, and the L1/L2 penalties added to them.

The loss config names a class here and passes ``impl: ${model.impl}``, so the single
``model.impl`` switch also decides whether the loss (and its backward) is hand-written
(``cnnlab.layers`` / ``cnnlab.functional``) or PyTorch's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.layers import get_namespace


def _log_softmax(impl: str) -> Callable[..., Tensor]:
    get_namespace(impl)  # validates impl with a helpful message
    if impl == "custom":
        from cnnlab.functional import log_softmax

        return log_softmax
    return F.log_softmax


class CrossEntropy(nn.Module):
    """Softmax cross-entropy on logits, optionally with label smoothing."""

    def __init__(self, impl: str = "custom", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.criterion = get_namespace(impl).CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.criterion(logits, target)


class SoftmaxMSE(nn.Module):
    """Squared error between softmax probabilities and one-hot targets.

    Probabilities rather than raw logits keep the loss bounded and scale-free, which is the
    classic "quadratic cost" this option exists to compare against cross-entropy. Class-
    probability targets (MixUp/CutMix) are used as they are: the one-hot vector's soft twin.
    """

    def __init__(self, impl: str = "custom") -> None:
        super().__init__()
        self.log_softmax = _log_softmax(impl)
        self.criterion = get_namespace(impl).MSELoss()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs = self.log_softmax(logits, dim=1).exp()
        if target.is_floating_point():
            return self.criterion(probs, target.to(probs.dtype))
        one_hot = F.one_hot(target, num_classes=logits.shape[1]).to(probs.dtype)
        return self.criterion(probs, one_hot)


class LogSoftmaxNLL(nn.Module):
    """Negative log-likelihood of ``log_softmax(logits)``: cross-entropy as two separate ops.

    NLL takes class indices only (as ``torch.nn.NLLLoss``), so MixUp/CutMix are refused with it
    (``cnnlab.training.validate``); their soft targets need ``loss=cross_entropy`` or ``mse``."""

    def __init__(self, impl: str = "custom") -> None:
        super().__init__()
        self.log_softmax = _log_softmax(impl)
        self.criterion = get_namespace(impl).NLLLoss()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.criterion(self.log_softmax(logits, dim=1), target)


def weight_penalty(model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> Tensor:
    """``l1 * sum|w| + l2 * sum(w^2)`` over weight matrices and kernels.

    Only tensors with two or more dimensions count: penalising biases and batch-norm scales
    does not regularise capacity and would only shift activations. Unlike optimizer weight
    decay, the penalty is part of the logged loss and flows through the hand-written backward.
    """
    weights = [p for p in model.parameters() if p.ndim > 1 and p.requires_grad]
    device = weights[0].device if weights else None
    penalty = torch.zeros((), device=device)
    if l1:
        penalty = penalty + l1 * sum(w.abs().sum() for w in weights)
    if l2:
        penalty = penalty + l2 * sum(w.pow(2).sum() for w in weights)
    return penalty
