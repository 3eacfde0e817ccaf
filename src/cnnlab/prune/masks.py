"""Which weights to drop: magnitude (L1) unstructured and L1 channel (structured) selection.

The masks are applied through ``torch.nn.utils.prune`` (``weight`` becomes ``weight_orig`` times
``weight_mask`` in a forward pre-hook), so they work on any ``torch.nn.Conv2d``/``Linear`` --
cnnlab's hand-written twins subclass them and read ``self.weight`` in ``forward`` like the
built-ins do. Every selection is made from scratch on the current weights for a *total*
sparsity (``torch.nn.utils.prune`` applied again would prune a fraction of what is left): weights
pruned earlier are zero after :func:`bake`, so they are the first chosen again, and a resumed
run whose checkpoint holds only the baked zeros gets the same masks back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

#: the ``layers`` names and the torch.nn classes they select (hand-written twins are subclasses)
LAYER_TYPES: dict[str, type[nn.Module]] = {"conv": nn.Conv2d, "linear": nn.Linear}


def n_to_prune(amount: float, total: int) -> int:
    """``round(amount * total)``: the count ``torch.nn.utils.prune`` uses for a fraction."""
    return round(amount * total)


def prunable_layers(
    model: nn.Module, layers: Sequence[str], structured: bool = False
) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose weights are pruned, in module order.

    Structured pruning removes output channels/units, so the network's last Linear (whose
    outputs are the classes) is never among them.
    """
    types = tuple(LAYER_TYPES[name] for name in layers)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, types)]
    if structured:
        linears = [m for _, m in model.named_modules() if isinstance(m, nn.Linear)]
        output = linears[-1] if linears else None
        found = [(name, m) for name, m in found if m is not output]
    return found


def following_batchnorm(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """Each conv mapped to the batch norm registered right after it over the same channels.

    A pruned channel must be silenced there too: BN(0) is its shift ``beta``, not 0.
    """
    pairs: dict[nn.Module, nn.Module] = {}
    previous: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if isinstance(previous, nn.Conv2d) and previous.out_channels == module.num_features:
                pairs[previous] = module
            previous = None
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            previous = module
    return pairs


# -- selection ----------------------------------------------------------------------------------
def unstructured_masks(
    modules: Sequence[nn.Module], amount: float, scope: str = "layer"
) -> dict[nn.Module, Tensor]:
    """0/1 masks dropping the ``amount`` smallest |w| of each weight (``layer``) or of all of
    them together (``global``), with ``torch.topk`` as in ``torch.nn.utils.prune.L1Unstructured``."""
    with torch.no_grad():
        weights = [m.weight.detach() for m in modules]
        if scope == "global":
            flat = torch.cat([w.abs().flatten().to(torch.float64) for w in weights])
            drop = _smallest(flat, n_to_prune(amount, flat.numel()))
            keep = torch.ones_like(flat)
            keep[drop] = 0
            masks, start = {}, 0
            for module, w in zip(modules, weights, strict=True):
                masks[module] = keep[start : start + w.numel()].view_as(w).to(w.dtype)
                start += w.numel()
            return masks
        masks = {}
        for module, w in zip(modules, weights, strict=True):
            keep = torch.ones(w.numel(), dtype=w.dtype, device=w.device)
            keep[_smallest(w.abs().flatten(), n_to_prune(amount, w.numel()))] = 0
            masks[module] = keep.view_as(w)
        return masks


def _smallest(values: Tensor, k: int) -> Tensor:
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=values.device)
    return torch.topk(values, k, largest=False).indices


def channel_scores(module: nn.Module) -> Tensor:
    """The L1 norm of each output channel's (or unit's) weights."""
    w = module.weight.detach()
    return w.abs().flatten(1).sum(dim=1)


def kept_channels(
    modules: Sequence[nn.Module], amount: float, scope: str = "layer"
) -> dict[nn.Module, Tensor]:
    """Sorted indices of the output channels each module keeps; every module keeps at least one.

    ``layer``: each module drops ``round(amount * channels)`` of its lowest-L1 channels.
    ``global``: channels of all modules compete on their *mean* |w| (the L1 norm divided by the
    filter size, so a 3x3x128 filter and a 3x3x3 one compare), ``round(amount * all channels)``
    go.
    """
    with torch.no_grad():
        if scope == "global":
            entries = [
                (float(score) / m.weight[0].numel(), i, c)
                for i, m in enumerate(modules)
                for c, score in enumerate(channel_scores(m).tolist())
            ]
            left = [m.weight.shape[0] for m in modules]
            budget = n_to_prune(amount, sum(left))
            dropped: list[set[int]] = [set() for _ in modules]
            for _, i, c in sorted(entries):
                if budget == 0:
                    break
                if left[i] > 1:
                    dropped[i].add(c)
                    left[i] -= 1
                    budget -= 1
            return {
                m: torch.tensor(
                    [c for c in range(m.weight.shape[0]) if c not in dropped[i]], dtype=torch.long
                )
                for i, m in enumerate(modules)
            }
        kept = {}
        for m in modules:
            scores = channel_scores(m)
            n = scores.numel()
            drop = min(n_to_prune(amount, n), n - 1)
            order = torch.argsort(scores, stable=True)  # ties: the lower index goes first
            kept[m] = torch.sort(order[drop:]).values.cpu()
        return kept


def channel_masks(
    kept: dict[nn.Module, Tensor], batchnorms: dict[nn.Module, nn.Module]
) -> dict[tuple[nn.Module, str], Tensor]:
    """Masks that zero every dropped channel: its weights, its bias and its batch norm's
    scale and shift, so the channel outputs exactly 0 and can be cut out without changing the
    network's function."""
    masks: dict[tuple[nn.Module, str], Tensor] = {}
    for module, keep in kept.items():
        alive = torch.zeros(module.weight.shape[0], dtype=torch.bool)
        alive[keep] = True
        for owner in (module, batchnorms.get(module)):
            if owner is None:
                continue
            for name in ("weight", "bias"):
                param = getattr(owner, name, None)
                if param is None:
                    continue
                shape = (-1,) + (1,) * (param.dim() - 1)
                masks[(owner, name)] = (
                    alive.to(param.device).view(shape).expand_as(param).to(param.dtype)
                )
    return masks


# -- applying and baking ------------------------------------------------------------------------
def apply_masks(masks: dict[tuple[nn.Module, str], Tensor]) -> None:
    """Hold the masked entries at zero from now on (``torch.nn.utils.prune.custom_from_mask``)."""
    for (module, name), mask in masks.items():
        torch_prune.custom_from_mask(module, name, mask)


def bake(model: nn.Module) -> None:
    """Make every mask permanent: ``weight = weight_orig * weight_mask`` becomes a plain
    parameter again (the same ``Parameter`` object, so an optimizer keeps its state)."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(module, hook._tensor_name)


def baked_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state_dict`` with each ``X_orig``/``X_mask`` pair replaced by ``X = X_orig * X_mask``:
    the ``torch.nn`` keys, whatever is pruned at the moment it is saved."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state_dict:
            base = key[: -len("_orig")]
            mask = state_dict[base + "_mask"]
            out[base] = (value * mask.to(value.dtype)).detach()
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Sparsity:
    zeros: int
    total: int

    @property
    def fraction(self) -> float:
        return self.zeros / self.total if self.total else 0.0


def weight_sparsity(modules: Iterable[nn.Module]) -> Sparsity:
    """Exact zeros among the (effective, masked) weights of ``modules``."""
    zeros = total = 0
    with torch.no_grad():
        for m in modules:
            w = m.weight
            zeros += int((w == 0).sum())
            total += w.numel()
    return Sparsity(zeros, total)


def prune_model(
    model: nn.Module,
    amount: float,
    method: str = "unstructured",
    scope: str = "layer",
    layers: Sequence[str] = ("conv", "linear"),
) -> dict[nn.Module, Tensor] | None:
    """Bake any earlier masks, then mask ``model`` to ``amount`` total sparsity.

    Returns the kept channels for ``structured`` (what :mod:`cnnlab.prune.slim` cuts out), None
    for ``unstructured``.
    """
    bake(model)
    modules = [m for _, m in prunable_layers(model, layers, structured=method == "structured")]
    if not modules:
        return None
    if method == "structured":
        kept = kept_channels(modules, amount, scope)
        apply_masks(channel_masks(kept, following_batchnorm(model)))
        return kept
    masks = unstructured_masks(modules, amount, scope)
    apply_masks({(m, "weight"): mask for m, mask in masks.items()})
    return None
