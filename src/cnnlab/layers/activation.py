"""Activation twins (ReLU, ReLU6/Hardtanh, Hardsigmoid, Hardswish, Sigmoid, SiLU, GELU) and Flatten."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.activation import relu
from cnnlab.functional.hard_activation import hardsigmoid, hardswish, hardtanh, relu6
from cnnlab.functional.smooth_activation import gelu, sigmoid, silu


class ReLU(nn.ReLU):
    """Same arguments (incl. ``inplace``) and repr as ``torch.nn.ReLU``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return relu(input, inplace=self.inplace)


class Flatten(nn.Flatten):
    """``torch.nn.Flatten`` as is: flattening is a view with no kernel to re-implement.

    It lives here so that a model built from the ``custom`` namespace finds every layer it uses.
    """


class Hardtanh(nn.Hardtanh):
    """Same arguments (``min_val``, ``max_val``, ``inplace``) and repr as ``torch.nn.Hardtanh``."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(nn.ReLU6):
    """``torch.nn.ReLU6`` (a Hardtanh from 0 to 6, as there); MobileNetV2's activation."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return relu6(input, self.inplace)


class Hardsigmoid(nn.Hardsigmoid):
    """Same arguments and repr as ``torch.nn.Hardsigmoid``; MobileNetV3's squeeze-excitation gate."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return hardsigmoid(input, self.inplace)


class Hardswish(nn.Hardswish):
    """Same arguments and repr as ``torch.nn.Hardswish``; MobileNetV3's activation."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return hardswish(input, self.inplace)


class Sigmoid(nn.Sigmoid):
    """``torch.nn.Sigmoid``; EfficientNet's squeeze-excitation gate."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return sigmoid(input)


class SiLU(nn.SiLU):
    """Same arguments (incl. ``inplace``) and repr as ``torch.nn.SiLU``; EfficientNet's activation."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return silu(input, self.inplace)


class GELU(nn.GELU):
    """Same ``approximate`` (``'none'`` or ``'tanh'``) and repr as ``torch.nn.GELU``; ConvNeXt's."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        with errors_named_after(self):
            return gelu(input, self.approximate)
