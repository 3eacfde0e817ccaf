"""Cut pruned channels out of a network for real: slimmer tensors, a smaller file, faster steps.

A structured mask only zeroes channels; here they are removed. The widths that remain are
written into the model's *config* (``model.channels``/``model.hidden`` of ``seed_cnn``,
``model.cfg``/``model.hidden`` of ``vgg``), so the slim checkpoint rebuilds through the same
``build_module`` as any other -- ``cnnlab-eval`` and ``load_run`` need nothing new, and the
checkpoint stays plain data.

The cut walks the network's Conv2d / BatchNorm2d / Linear modules in order, which is its data
flow for the chain models named in :data:`WIDTHS`. Networks whose channels are tied by a residual
addition (``resnet``: a block's output channels must match its shortcut's) are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.prune.options import PruneConfigError


def _seed_cnn(model_cfg: dict[str, Any], convs: list[int], hidden: list[int]) -> dict[str, Any]:
    return {**model_cfg, "channels": convs, "hidden": hidden[0]}


def _vgg(model_cfg: dict[str, Any], convs: list[int], hidden: list[int]) -> dict[str, Any]:
    widths = iter(convs)
    layout = [item if item == "M" else next(widths) for item in model_cfg["cfg"]]
    return {**model_cfg, "cfg": layout, "hidden": hidden[0]}


#: model ``_target_`` -> how its config spells the conv widths and hidden units that remain
WIDTHS: dict[str, Callable[[dict[str, Any], list[int], list[int]], dict[str, Any]]] = {
    "cnnlab.models.SeedCNN": _seed_cnn,
    "cnnlab.models.VGG": _vgg,
}


def check_sliceable(model_cfg: Mapping[str, Any]) -> None:
    """Refuse, in one line, a model whose channels cannot be cut out as a chain."""
    target = model_cfg.get("_target_")
    if target in WIDTHS:
        return
    name = str(target).rsplit(".", 1)[-1]
    why = (
        "its residual additions tie each block's output channels to its shortcut's"
        if name == "ResNet"
        else "its layer widths are not config values, so a slimmer copy cannot be rebuilt"
    )
    raise PruneConfigError(
        f"structured=true cannot cut channels out of {name} ({why}); structured pruning "
        f"supports {', '.join(t.rsplit('.', 1)[-1] for t in WIDTHS)}: use structured=false "
        "(unstructured) for this model."
    )


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm))
    ]


def slim_state_dict(
    model: nn.Module, kept: Mapping[nn.Module, Tensor], prefix: str = ""
) -> tuple[dict[str, Tensor], list[int], list[int]]:
    """The state dict of ``model`` with only the ``kept`` output channels of each pruned layer
    (and the matching inputs of the layer after it), plus the conv widths and hidden Linear
    widths that remain, in order.

    A Linear right after the convolutions sees ``C x H x W`` flattened channel-major, so a kept
    channel ``c`` keeps its inputs ``c*H*W ... (c+1)*H*W - 1``.
    """
    state: dict[str, Tensor] = {}
    conv_widths: list[int] = []
    hidden_widths: list[int] = []
    incoming: Tensor | None = None  # kept channels of the previous layer's output
    incoming_full = 0
    chain = _chain(model)
    linears = [m for _, m in chain if isinstance(m, nn.Linear)]
    for name, m in chain:
        key = f"{prefix}{name}."
        with torch.no_grad():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for tensor_name, tensor in m.state_dict().items():
                    pick = incoming is not None and tensor.dim() == 1
                    state[key + tensor_name] = (tensor[incoming] if pick else tensor).clone()
                continue
            weight = m.weight.detach()
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise PruneConfigError(
                    f"structured=true cannot cut channels of the grouped convolution {name} "
                    f"(groups={m.groups}); use structured=false."
                )
            if incoming is not None:
                if isinstance(m, nn.Linear) and m.in_features != incoming_full:
                    area = m.in_features // incoming_full
                    columns = (incoming[:, None] * area + torch.arange(area)).flatten()
                else:
                    columns = incoming
                weight = weight[:, columns]
            out = kept.get(m)
            if out is None:
                out = torch.arange(weight.shape[0])
            state[key + "weight"] = weight[out].clone()
            if m.bias is not None:
                state[key + "bias"] = m.bias.detach()[out].clone()
            incoming, incoming_full = out, m.weight.shape[0]
            if isinstance(m, nn.Conv2d):
                conv_widths.append(len(out))
            elif m is not linears[-1]:
                hidden_widths.append(len(out))
    return state, conv_widths, hidden_widths


def slim_model_config(
    model_cfg: dict[str, Any], conv_widths: list[int], hidden_widths: list[int]
) -> dict[str, Any]:
    check_sliceable(model_cfg)
    return WIDTHS[model_cfg["_target_"]](model_cfg, conv_widths, hidden_widths)
