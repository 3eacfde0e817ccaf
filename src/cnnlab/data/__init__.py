"""LightningDataModules for cnnlab: one per dataset, all with the same options and metadata.

Each module exposes ``num_classes``, ``input_shape`` (C, H, W), ``class_names``, ``mean`` and
``std`` right after construction, without touching the data, so models can be built before any
download; loaders yield ``(float32 NCHW images, int64 labels)``.
"""

from cnnlab.data.base import ImageClassificationDataModule
from cnnlab.data.cifar10 import CIFAR10DataModule
from cnnlab.data.digits import DigitsDataModule
from cnnlab.data.download import DatasetNotFoundError
from cnnlab.data.imagefolder import ImageFolderDataModule
from cnnlab.data.images import ImageDecodeError
from cnnlab.data.mnist import FashionMNISTDataModule, MNISTDataModule
from cnnlab.data.transforms import Augment

__all__ = [
    "Augment",
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageClassificationDataModule",
    "ImageDecodeError",
    "ImageFolderDataModule",
    "MNISTDataModule",
]
