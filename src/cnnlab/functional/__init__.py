"""Functional forms of the hand-written ops (each backed by one ``torch.autograd.Function``)."""

from cnnlab.functional.activation import log_softmax, relu
from cnnlab.functional.batchnorm import batch_norm
from cnnlab.functional.conv import conv2d
from cnnlab.functional.dropout import dropout
from cnnlab.functional.linear import linear
from cnnlab.functional.loss import cross_entropy, mse_loss, nll_loss
from cnnlab.functional.pooling import avg_pool2d, max_pool2d

__all__ = [
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "cross_entropy",
    "dropout",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "relu",
]
