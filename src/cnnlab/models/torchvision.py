"""Any classification model of ``torchvision.models``, by name, in either layer family.

The network is torchvision's own (``weights=None``: nothing is downloaded), sized for the data
module: ``num_classes`` from the data, and the first conv rebuilt for its channel count when
that is not 3. ``small_stem`` adapts ImageNet stems (7x7/2 conv + max-pool, 4x4/4 patchify,
3x3/2 conv) to CIFAR-sized and smaller images: the stem conv becomes 3x3 stride 1 and the
max-pool after it goes, as in the CIFAR ResNets; then, while the image would shrink to nothing
(8x8 digits through VGG's five pools), the next max-pools go too. ``impl=custom`` swaps every
supported layer for its hand-written twin with ``convert()``; the layer types that stay
built-in are logged with their counts.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch
import torch.nn as nn
import torchvision

from cnnlab.layers import IMPLS, convert
from cnnlab.models._shapes import check_in_shape
from cnnlab.training.errors import UserError

log = logging.getLogger(__name__)

SMALL_STEM = ("auto", True, False)
#: ``small_stem=auto`` switches the stem on at this size and below (CIFAR's 32x32, digits' 8x8).
SMALL_IMAGE = 32
#: Families whose input is cut into fixed patches or windows: no conv stem to adapt.
PATCH_MODELS = ("vit_", "swin_", "maxvit_")
#: Leaf modules without a kernel of their own (views, no-ops): not "left built-in" compute.
NO_COMPUTE = (nn.Identity, nn.Flatten, torchvision.ops.Permute)


class TorchvisionModelError(UserError, ValueError):
    """A ``model.*`` value that cannot give a torchvision model for this data (one line)."""


def model_names() -> list[str]:
    """Every classification model torchvision can build by name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


class TorchvisionModel(nn.Module):
    """``torchvision.models.get_model(name)`` for ``in_shape`` and ``num_classes`` (``self.net``)."""

    def __init__(
        self,
        impl: str = "custom",
        in_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
        name: str = "resnet18",
        small_stem: str | bool = "auto",
    ) -> None:
        super().__init__()
        if impl not in IMPLS:
            raise TorchvisionModelError(f"model.impl must be one of {IMPLS}, got {impl!r}.")
        names = model_names()
        if name not in names:
            raise TorchvisionModelError(
                f"model.name={name!r} is not a torchvision classification model; use one of: "
                f"{', '.join(names)}."
            )
        channels, (height, width) = check_in_shape(in_shape, f"torchvision {name}")
        patches = name.startswith(PATCH_MODELS)
        if small_stem not in SMALL_STEM:
            raise TorchvisionModelError(
                f"model.small_stem must be auto, true or false, got {small_stem!r}."
            )
        if small_stem is True and patches:
            raise TorchvisionModelError(
                f"model.small_stem=true: {name} cuts images into patches and has no conv stem to "
                "adapt; use model.small_stem=false (and images its patch size divides)."
            )
        if small_stem == "auto":
            small_stem = not patches and max(height, width) <= SMALL_IMAGE

        try:
            self.net = torchvision.models.get_model(
                name, weights=None, num_classes=num_classes, **_builder_kwargs(name, height, width)
            )
        except (AssertionError, ValueError, TypeError) as err:  # torchvision's own checks
            raise TorchvisionModelError(
                f"torchvision {name} cannot be built for {height}x{width} images: {err}"
            ) from None
        if channels != 3 or small_stem:
            _rebuild_stem(self.net, channels, small=bool(small_stem))
        if small_stem:
            _drop_pools_until_it_fits(self.net, name, (channels, height, width))
        _check_fits(self.net, name, (channels, height, width))
        if impl == "custom":
            convert(self.net, to="custom")
        left = builtin_leftovers(self.net)
        log.info(
            "torchvision %s (impl=%s, small_stem=%s): layers left built-in: %s",
            name, impl, small_stem, ", ".join(f"{k} x{v}" for k, v in left.items()) or "none",
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _builder_kwargs(name: str, height: int, width: int) -> dict[str, Any]:
    """What a builder needs beyond ``num_classes``: plain logits (no auxiliary heads) and the
    image size for models whose position embeddings or windows are sized from it."""
    if name in ("googlenet", "inception_v3"):
        return {"aux_logits": False, "init_weights": True}
    if name.startswith("vit_"):
        if height != width:
            raise TorchvisionModelError(f"{name} needs square images, got {height}x{width}.")
        return {"image_size": height}
    if name.startswith("maxvit_"):
        return {"input_size": (height, width)}
    return {}


def _parent_and_key(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, key = path.rpartition(".")
    return (root.get_submodule(parent_path) if parent_path else root), key


def _rebuild_stem(net: nn.Module, channels: int, small: bool) -> None:
    """Give the first conv ``channels`` inputs and, for ``small``, 3x3 / stride 1 / padding 1;
    for ``small`` also drop a max-pool that follows it before the next conv."""
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    path, stem = convs[0]
    geometry = (
        {"kernel_size": 3, "stride": 1, "padding": 1}
        if small
        else {"kernel_size": stem.kernel_size, "stride": stem.stride, "padding": stem.padding}
    )
    new = nn.Conv2d(channels, stem.out_channels, bias=stem.bias is not None, **geometry)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    parent, key = _parent_and_key(net, path)
    setattr(parent, key, new)
    if not small:
        return
    second_conv = convs[1][0] if len(convs) > 1 else None
    for name, module in net.named_modules():
        if name == second_conv:
            break
        if isinstance(module, nn.MaxPool2d):
            parent, key = _parent_and_key(net, name)
            setattr(parent, key, nn.Identity())
            break


def _fits(net: nn.Module, in_shape: tuple[int, int, int]) -> str | None:
    """None when a 2-image batch of ``in_shape`` passes through ``net``, else the error."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(2, *in_shape))
    except (RuntimeError, ValueError) as err:
        return str(err).strip().splitlines()[0]
    finally:
        net.train(was_training)
    return None


def _drop_pools_until_it_fits(net: nn.Module, name: str, in_shape: tuple[int, int, int]) -> None:
    """Replace max-pools by Identity, first to last, while the image is too small for ``net``."""
    while _fits(net, in_shape) is not None:
        pools = [n for n, m in net.named_modules() if isinstance(m, nn.MaxPool2d)]
        if not pools:
            return  # _check_fits reports it
        parent, key = _parent_and_key(net, pools[0])
        setattr(parent, key, nn.Identity())
        log.info("torchvision %s: dropped max-pool %s for %s inputs", name, pools[0], in_shape)


def _check_fits(net: nn.Module, name: str, in_shape: tuple[int, int, int]) -> None:
    error = _fits(net, in_shape)
    if error is not None:
        raise TorchvisionModelError(
            f"torchvision {name} does not run on {in_shape[1]}x{in_shape[2]} images ({error}); "
            "try model.small_stem=true, larger images, or another model.name."
        )


def builtin_leftovers(model: nn.Module) -> dict[str, int]:
    """Leaf module types with compute that are not hand-written, with their counts."""
    counts = Counter(
        type(m).__name__
        for m in model.modules()
        if not list(m.children())
        and not type(m).__module__.startswith("cnnlab.")
        and not isinstance(m, NO_COMPUTE)
    )
    return dict(sorted(counts.items()))
