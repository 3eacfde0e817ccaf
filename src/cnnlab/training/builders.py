"""Build every piece of a run from its config; shared by train, eval, viz, compare and report.

A run is fully described by its resolved config, so the same functions rebuild it later from
``checkpoint["cnnlab_config"]`` (``load_run``) without Hydra or the original command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cnnlab.layers import IMPLS
from cnnlab.training.compile import compile_options
from cnnlab.training.module import ClassificationModule, is_full_batch
from cnnlab.training.sync_batchnorm import sync_batchnorm_options


def plain(config: Any) -> Any:
    """Resolved plain containers: what goes into hparams and checkpoints (``weights_only``-safe)."""
    if isinstance(config, DictConfig) or OmegaConf.is_list(config):
        return OmegaConf.to_container(config, resolve=True)
    return config


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    return instantiate(cfg.data)


def build_model(cfg: DictConfig, datamodule: L.LightningDataModule) -> nn.Module:
    """The network for ``datamodule``'s input shape and classes, in the ``model.impl`` family."""
    impl = cfg.model.get("impl")
    if impl not in IMPLS:
        raise ValueError(
            f"model.impl={impl!r} is not a layer family: use model.impl=custom (hand-written "
            "layers) or model.impl=builtin (torch.nn)."
        )
    return instantiate(
        cfg.model,
        in_shape=tuple(datamodule.input_shape),
        num_classes=datamodule.num_classes,
    )


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> ClassificationModule:
    return ClassificationModule(
        model=build_model(cfg, datamodule),
        loss=instantiate(cfg.loss),
        num_classes=datamodule.num_classes,
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        l1=float(cfg.get("l1", 0.0)),
        l2=float(cfg.get("l2", 0.0)),
        compile=compile_options(cfg.get("compile")),
        config=plain(cfg),
    )


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` entry of a callbacks/logger group, so entries can be added or nulled."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return _instantiate_group(cfg.get("callbacks"))


def build_loggers(cfg: DictConfig) -> list[Logger]:
    return _instantiate_group(cfg.get("logger"))


def resolve_precision(precision: Any, accelerator: str = "auto") -> Any:
    """``auto`` -> mixed precision on a CUDA GPU, ``32-true`` elsewhere.

    bf16 only where the GPU has it in hardware (Ampere and later): an emulated bf16 is slower
    than float32, so older GPUs get ``16-mixed`` (with Lightning's loss scaling) instead.
    """
    if precision != "auto":
        return precision
    if not (accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()):
        return "32-true"
    native_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    return "bf16-mixed" if native_bf16 else "16-mixed"


def count_train_batches(datamodule: L.LightningDataModule) -> int:
    datamodule.setup("fit")
    return len(datamodule.train_dataloader())


def build_trainer(
    cfg: DictConfig,
    datamodule: L.LightningDataModule,
    callbacks: list[Callback] | None = None,
    loggers: list[Logger] | None = None,
) -> L.Trainer:
    """The trainer of ``cfg.trainer``; ``optimizer=gd`` accumulates over the whole train set.

    ``trainer.sync_batchnorm`` gives each batch norm its own family's SyncBatchNorm (see
    ``cnnlab.training.sync_batchnorm``), not Lightning's torch.nn one.
    """
    extra: dict[str, Any] = {
        "precision": resolve_precision(cfg.trainer.precision, cfg.trainer.get("accelerator")),
        **sync_batchnorm_options(cfg.trainer),
    }
    if is_full_batch(cfg.optimizer):
        # Lightning also steps at the end of an epoch whose batches are fewer than this, so
        # one step per epoch holds under DDP sharding and limit_train_batches as well.
        extra["accumulate_grad_batches"] = count_train_batches(datamodule)
    return instantiate(cfg.trainer, callbacks=callbacks or [], logger=loggers or False, **extra)


# -- rebuilding a finished run ------------------------------------------------------------------
def find_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as given, or a run folder's ``checkpoints/best.ckpt`` (else ``last.ckpt``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    raise FileNotFoundError(
        f"No checkpoint at {path}: pass a .ckpt file or a run folder that holds "
        "checkpoints/best.ckpt or checkpoints/last.ckpt (written by cnnlab-train)."
    )


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """The run config stored in a cnnlab checkpoint, and the checkpoint itself."""
    ckpt_file = find_checkpoint(path)
    checkpoint = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    if "cnnlab_config" not in checkpoint:
        raise ValueError(
            f"{ckpt_file} has no 'cnnlab_config': it was not written by cnnlab-train, so its "
            "run cannot be rebuilt. Train it with cnnlab-train or load its weights by hand."
        )
    return OmegaConf.create(checkpoint["cnnlab_config"]), checkpoint


def load_run(
    path: str | Path,
) -> tuple[DictConfig, ClassificationModule, L.LightningDataModule]:
    """Rebuild a trained run (config, module with its weights, data module) from its folder."""
    cfg, checkpoint = load_checkpoint(path)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    return cfg, module, datamodule
