"""Functional forms of the hand-written ops (each backed by one ``torch.autograd.Function``)."""

from cnnlab.functional.activation import log_softmax, relu
from cnnlab.functional.adaptive_pool import adaptive_avg_pool2d
from cnnlab.functional.batchnorm import batch_norm
from cnnlab.functional.conv import conv2d
from cnnlab.functional.dropout import dropout
from cnnlab.functional.hard_activation import hardsigmoid, hardswish, hardtanh, relu6
from cnnlab.functional.layernorm import layer_norm
from cnnlab.functional.linear import linear
from cnnlab.functional.loss import cross_entropy, mse_loss, nll_loss
from cnnlab.functional.pooling import avg_pool2d, max_pool2d
from cnnlab.functional.smooth_activation import gelu, sigmoid, silu
from cnnlab.functional.stochastic_depth import stochastic_depth

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "dropout",
    "gelu",
    "hardsigmoid",
    "hardswish",
    "hardtanh",
    "layer_norm",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "relu",
    "relu6",
    "sigmoid",
    "silu",
    "stochastic_depth",
]
