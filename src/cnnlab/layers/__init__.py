"""Drop-in ``torch.nn`` twins whose forward and backward passes are written by hand.

Each module subclasses its ``torch.nn`` namesake and only replaces ``forward``, so arguments,
initialisation, parameter names, ``state_dict`` keys and ``repr`` match PyTorch exactly and
``convert`` can swap a trained model between the two families without touching a weight.
"""

from cnnlab.layers.activation import Flatten, ReLU
from cnnlab.layers.batchnorm import BatchNorm2d
from cnnlab.layers.conv import Conv2d
from cnnlab.layers.convert import convert
from cnnlab.layers.dropout import Dropout
from cnnlab.layers.linear import Linear
from cnnlab.layers.loss import CrossEntropyLoss, MSELoss, NLLLoss
from cnnlab.layers.pooling import AvgPool2d, MaxPool2d
from cnnlab.layers.registry import IMPLS, get_namespace

__all__ = [
    "IMPLS",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Linear",
    "MSELoss",
    "MaxPool2d",
    "NLLLoss",
    "ReLU",
    "convert",
    "get_namespace",
]
