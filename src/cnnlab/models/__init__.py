"""The networks, each written once against ``get_namespace(impl)``.

``impl="custom"`` and ``impl="builtin"`` therefore give the same structure and ``state_dict``
keys, so weights move freely between a hand-written and a PyTorch-kernel copy of a model.
"""

from torch import nn

from cnnlab.models.lenet5 import LeNet5
from cnnlab.models.resnet import ResNet
from cnnlab.models.seed_cnn import SeedCNN
from cnnlab.models.torchvision import TorchvisionModel
from cnnlab.models.vgg import VGG

MODELS: dict[str, type[nn.Module]] = {
    "seed_cnn": SeedCNN,
    "lenet5": LeNet5,
    "vgg": VGG,
    "resnet": ResNet,
    "torchvision": TorchvisionModel,
}

__all__ = ["MODELS", "VGG", "LeNet5", "ResNet", "SeedCNN", "TorchvisionModel"]
