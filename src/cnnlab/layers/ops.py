"""The one list of hand-written ops: each custom layer, its ``torch.nn`` twin, its functional op(s)
and the built-in kernels it replaces.

Everything that enumerates the custom layers derives from :data:`OPS`: the exports of
``cnnlab.layers``, the tables of :func:`cnnlab.layers.convert`, the no-built-in-fallback guard
(``tests/layers``, which forbids every ``builtin_functional``/``builtin_aten`` listed here) and the
registry-wide parity test. Adding a layer means adding one :class:`Op` here; the tests fail until
it has a parity example and a guard case, and the guard catches its built-in twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from torchvision.models.convnext import LayerNorm2d as TorchvisionLayerNorm2d
from torchvision.ops import StochasticDepth as TorchvisionStochasticDepth

import cnnlab.functional as CF
from cnnlab.functional.sync_batchnorm import sync_batch_norm
from cnnlab.layers.activation import (
    GELU,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Hardtanh,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
)
from cnnlab.layers.batchnorm import BatchNorm2d
from cnnlab.layers.conv import Conv2d
from cnnlab.layers.dropout import Dropout, StochasticDepth
from cnnlab.layers.layernorm import LayerNorm, LayerNorm2d
from cnnlab.layers.linear import Linear
from cnnlab.layers.loss import CrossEntropyLoss, MSELoss, NLLLoss
from cnnlab.layers.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from cnnlab.layers.sync_batchnorm import SyncBatchNorm


@dataclass(frozen=True)
class Op:
    """One hand-written layer and everything the rest of the package needs to know about it.

    ``builtin_functional`` names the ``torch.nn.functional`` functions and ``builtin_aten`` the
    ATen kernels (``fnmatch`` patterns, forward and backward) of PyTorch's own implementation:
    the hand-written path must never reach them. A layer without a kernel of its own (Flatten, a
    view; StochasticDepth, plain tensor arithmetic in torchvision) lists none. ``builtin`` is a
    ``torch.nn`` class except for the twins of torchvision's own layers (``LayerNorm2d``,
    ``StochasticDepth``), which ``get_namespace("builtin")`` does not hold.
    """

    custom: type[nn.Module]
    builtin: type[nn.Module]
    functional: tuple[Callable[..., Any], ...] = ()
    builtin_functional: tuple[str, ...] = ()
    builtin_aten: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.custom.__name__


_BATCH_NORM_ATEN = ("*batch_norm*",)  # native_, _legit, cudnn_, _stats, _elemt, _backward_*, ...
_HARDTANH_ATEN = ("hardtanh*", "relu6*")  # relu6 is hardtanh(0, 6) in ATen
_LAYER_NORM_ATEN = ("*layer_norm*",)  # layer_norm, native_layer_norm(_backward)

OPS: tuple[Op, ...] = (
    Op(
        Conv2d,
        nn.Conv2d,
        (CF.conv2d,),
        ("conv2d", "unfold", "fold"),
        ("*convolution*", "*slow_conv*", "im2col", "col2im"),
    ),
    Op(Linear, nn.Linear, (CF.linear,), ("linear",), ("linear", "mkldnn_linear*")),
    Op(MaxPool2d, nn.MaxPool2d, (CF.max_pool2d,), ("max_pool2d",), ("*max_pool*",)),
    Op(AvgPool2d, nn.AvgPool2d, (CF.avg_pool2d,), ("avg_pool2d",), ("*avg_pool*",)),
    Op(
        AdaptiveAvgPool2d,
        nn.AdaptiveAvgPool2d,
        (CF.adaptive_avg_pool2d,),
        ("adaptive_avg_pool2d",),
        ("*adaptive_avg_pool*",),
    ),
    Op(ReLU, nn.ReLU, (CF.relu,), ("relu",), ("relu", "relu_", "threshold*")),
    Op(Hardtanh, nn.Hardtanh, (CF.hardtanh,), ("hardtanh",), _HARDTANH_ATEN),
    Op(ReLU6, nn.ReLU6, (CF.relu6,), ("hardtanh", "relu6"), _HARDTANH_ATEN),
    Op(Hardsigmoid, nn.Hardsigmoid, (CF.hardsigmoid,), ("hardsigmoid",), ("hardsigmoid*",)),
    Op(Hardswish, nn.Hardswish, (CF.hardswish,), ("hardswish",), ("hardswish*",)),
    # nn.Sigmoid calls torch.sigmoid, not F.sigmoid: only the ATen net sees that one.
    Op(Sigmoid, nn.Sigmoid, (CF.sigmoid,), ("sigmoid",), ("sigmoid*",)),
    Op(SiLU, nn.SiLU, (CF.silu,), ("silu",), ("silu*",)),
    Op(GELU, nn.GELU, (CF.gelu,), ("gelu",), ("gelu*",)),
    Op(LayerNorm, nn.LayerNorm, (CF.layer_norm,), ("layer_norm",), _LAYER_NORM_ATEN),
    Op(LayerNorm2d, TorchvisionLayerNorm2d, (), ("layer_norm",), _LAYER_NORM_ATEN),
    Op(Dropout, nn.Dropout, (CF.dropout,), ("dropout",), ("*dropout*",)),
    Op(StochasticDepth, TorchvisionStochasticDepth, (CF.stochastic_depth,)),
    Op(BatchNorm2d, nn.BatchNorm2d, (CF.batch_norm,), ("batch_norm",), _BATCH_NORM_ATEN),
    Op(
        SyncBatchNorm,
        nn.SyncBatchNorm,
        (sync_batch_norm, CF.batch_norm),
        ("batch_norm",),
        _BATCH_NORM_ATEN,
    ),
    Op(Flatten, nn.Flatten),
    Op(
        CrossEntropyLoss,
        nn.CrossEntropyLoss,
        (CF.cross_entropy, CF.log_softmax),
        ("cross_entropy", "log_softmax"),
        ("cross_entropy_loss", "*softmax*", "nll_loss*"),
    ),
    Op(NLLLoss, nn.NLLLoss, (CF.nll_loss,), ("nll_loss",), ("nll_loss*",)),
    Op(MSELoss, nn.MSELoss, (CF.mse_loss,), ("mse_loss",), ("mse_loss*",)),
)

#: The custom layer classes by name: what ``cnnlab.layers`` exports.
LAYERS: dict[str, type[nn.Module]] = {op.name: op.custom for op in OPS}
