"""Drop-in ``torch.nn`` twins whose forward and backward passes are written by hand.

Each module takes its ``torch.nn`` twin's arguments and holds its state -- most subclass it and
only replace ``forward`` -- so initialisation, parameter names, ``state_dict`` keys and ``repr``
match PyTorch exactly and ``convert`` can swap a trained model between the two families without
touching a weight. The layers exported here are those of the op registry, ``cnnlab.layers.ops``.
"""

from cnnlab.layers.convert import convert
from cnnlab.layers.ops import LAYERS, OPS
from cnnlab.layers.registry import IMPLS, get_namespace

globals().update(LAYERS)

__all__ = ["IMPLS", "OPS", *sorted(LAYERS), "convert", "get_namespace"]
