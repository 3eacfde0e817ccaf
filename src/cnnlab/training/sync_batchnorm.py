"""``trainer.sync_batchnorm`` for both layer families: each batch norm gets its own family's twin.

Lightning's ``Trainer(sync_batchnorm=True)`` applies ``TorchSyncBatchNorm``, which turns every
batch norm, the hand-written ``cnnlab.layers.BatchNorm2d`` included, into
``torch.nn.SyncBatchNorm``: ``model.impl=custom`` would silently train with PyTorch's batch norm
under DDP, and be handed back after fitting as torch's ``_BatchNormXd``. cnnlab therefore reads
``trainer.sync_batchnorm`` itself and passes Lightning this plugin instead: the hand-written
BatchNorm2d becomes ``cnnlab.layers.SyncBatchNorm``, ``torch.nn``'s batch norms become
``torch.nn.SyncBatchNorm``, and after fitting every layer gets exactly its old class back.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from hydra.utils import instantiate
from lightning.pytorch.plugins import LayerSync
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from omegaconf import DictConfig, OmegaConf

from cnnlab.layers.sync_batchnorm import SYNC_TWINS, from_sync_batchnorm, to_sync_batchnorm


def _runs_on_cpu(model: nn.Module) -> bool:
    """Whether the trainer that is setting ``model`` up trains it on CPU."""
    trainer = getattr(model, "_trainer", None)
    return trainer is not None and trainer.strategy.root_device.type == "cpu"


def _warn_unsynced(names: list[str], why: str) -> None:
    rank_zero_warn(f"sync_batchnorm: {', '.join(names)} keep per-process batch statistics ({why}).")


class SyncBatchNormPlugin(LayerSync):
    """Swap each batch norm for the SyncBatchNorm of its family while fitting, then back.

    On CPU, ``torch.nn``'s batch norms keep per-process statistics, with a warning:
    ``torch.nn.SyncBatchNorm`` has CUDA kernels only and DDP rejects it on CPU. The hand-written
    SyncBatchNorm runs on any backend, gloo on CPU included.
    """

    def __init__(self) -> None:
        self._originals: dict[nn.Module, type[nn.Module]] = {}

    def apply(self, model: nn.Module) -> nn.Module:
        twins = dict(SYNC_TWINS)
        if _runs_on_cpu(model):
            twins = {cls: twin for cls, twin in twins.items() if twin is not nn.SyncBatchNorm}
        synced = tuple(set(SYNC_TWINS.values()))
        left = [
            (name or type(model).__name__, type(module) in SYNC_TWINS)
            for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and type(module) not in twins
            and not isinstance(module, synced)
        ]
        torch_on_cpu = [name for name, known in left if known]
        subclasses = [name for name, known in left if not known]
        if torch_on_cpu:
            _warn_unsynced(
                torch_on_cpu,
                "torch.nn.SyncBatchNorm runs on CUDA only; "
                "model.impl=custom synchronises on CPU too",
            )
        if subclasses:
            _warn_unsynced(subclasses, "only the exact torch.nn and cnnlab classes are swapped")
        model, originals = to_sync_batchnorm(model, twins=twins)
        self._originals.update(originals)
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        model = from_sync_batchnorm(model, self._originals)
        self._originals.clear()
        return model


def sync_batchnorm_options(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Trainer arguments for ``trainer.sync_batchnorm``: this plugin, not Lightning's own swap.

    Plugins the config already lists are kept (a ``plugins`` argument replaces the config's).
    """
    if not trainer_cfg.get("sync_batchnorm", False):
        return {}
    configured = trainer_cfg.get("plugins")
    if configured is None:
        plugins = []
    elif OmegaConf.is_list(configured):
        plugins = list(instantiate(configured))
    else:
        plugins = [instantiate(configured)]
    return {"sync_batchnorm": False, "plugins": [*plugins, SyncBatchNormPlugin()]}
