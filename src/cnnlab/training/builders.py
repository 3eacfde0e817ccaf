"""Build every piece of a run from its config; shared by train, eval, viz, compare and report.

A run is fully described by its resolved config, so the same functions rebuild it later from
``checkpoint["cnnlab_config"]`` (``load_run``) without Hydra or the original command line.
"""

from __future__ import annotations

import pickle
import zipfile
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
from cnnlab.training.errors import UserError
from cnnlab.training.module import ClassificationModule, is_full_batch
from cnnlab.training.progress import honour_trainer_switches
from cnnlab.training.safe_config import check_config
from cnnlab.training.sync_batchnorm import sync_batchnorm_options
from cnnlab.training.validate import MISSING_HINTS, ConfigError, validate_config


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
        batch_mix=datamodule.batch_mix() if hasattr(datamodule, "batch_mix") else None,
        channels_last=bool(cfg.get("channels_last", False)),
    )


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` entry of a callbacks/logger group, so entries can be added or nulled."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    return honour_trainer_switches(_instantiate_group(cfg.get("callbacks")), cfg.get("trainer"))


def progress_callbacks(cfg: DictConfig) -> list[Callback]:
    """The run's progress bar alone (``callbacks.progress_bar``), for commands that test or
    fine-tune a trained run (eval, prune): Rich in a terminal, a TQDM bar that writes seldom
    into a log, as in training, where Lightning's default would draw Rich bars into the log."""
    entry = (cfg.get("callbacks") or {}).get("progress_bar")
    callbacks = [instantiate(entry)] if entry and "_target_" in entry else []
    return honour_trainer_switches(callbacks, cfg.get("trainer"))


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
class CheckpointError(UserError):
    """A checkpoint path that is missing, unreadable, or does not fit the model it describes."""


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def find_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as given, or a run folder's ``checkpoints/best.ckpt`` (else ``last.ckpt``)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    for name in ("best.ckpt", "last.ckpt"):
        if (path / "checkpoints" / name).is_file():
            return path / "checkpoints" / name
    what = "is a folder without checkpoints/" if path.is_dir() else "does not exist"
    raise CheckpointError(
        f"no checkpoint at {path} ({what}): pass a .ckpt file or a run folder that holds "
        "checkpoints/best.ckpt or checkpoints/last.ckpt (written by cnnlab-train)."
    )


def checkpoint_of(cfg: DictConfig) -> Path:
    """The checkpoint file a command that reads a trained run (eval, export, prune) is given.

    Their configs mark ``ckpt_path`` as ``???``, but composed onto train.yaml the latter's
    ``null`` stays (an OmegaConf merge never lets ``???`` replace a value), so an unset path is
    caught here, for all of them, rather than by the missing-value check.
    """
    path = OmegaConf.select(cfg, "ckpt_path", default=None, throw_on_missing=False)
    if path in (None, "", "???"):
        raise ConfigError(
            f"ckpt_path is not set: give it on the command line, e.g. {MISSING_HINTS['ckpt_path']}"
            " (or the run folder)."
        )
    return find_checkpoint(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a file or URL, as a :class:`CheckpointError` when the
    file is missing, a folder, empty, truncated, not a checkpoint or holds pickled code."""
    if is_url(path):
        from lightning.fabric.utilities.cloud_io import _load  # what Trainer.fit itself uses

        loader, name = (lambda: _load(str(path), map_location="cpu", weights_only=True)), str(path)
    else:
        file = Path(path).expanduser()
        if file.is_dir():
            last = file / "checkpoints" / "last.ckpt"
            example = last if last.is_file() else "outputs/train/runs/<time>/checkpoints/last.ckpt"
            raise CheckpointError(
                f"checkpoint {file} is a folder: pass a .ckpt file, e.g. {example}."
            )
        if not file.is_file():
            raise CheckpointError(f"checkpoint {file} does not exist: pass a .ckpt file.")
        if file.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {file} is empty (0 bytes): pass another .ckpt file.")
        if not zipfile.is_zipfile(file):  # torch.save has written zip files since torch 1.6
            raise CheckpointError(
                f"cannot load checkpoint {file}: it is truncated or not a PyTorch checkpoint (no "
                "zip directory at its end); copy it again or pass another .ckpt file."
            )
        loader, name = (lambda: torch.load(file, map_location="cpu", weights_only=True)), str(file)
    try:
        checkpoint = loader()
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            why = (
                "it holds pickled Python objects beyond tensors and plain data, and cnnlab "
                "loads checkpoints with weights_only=True only"
            )
        else:
            why = f"it is not a PyTorch checkpoint ({first_line(err)})"
        raise CheckpointError(f"cannot load checkpoint {name}: {why}.") from err
    except OSError as err:  # permissions, a network error for a URL, ...
        raise CheckpointError(f"cannot read checkpoint {name}: {first_line(err)}.") from err
    except (RuntimeError, EOFError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"cannot load checkpoint {name}: it is truncated or not a PyTorch checkpoint "
            f"({type(err).__name__}: {first_line(err)})."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{name} is not a Lightning checkpoint (no 'state_dict'): pass a .ckpt file "
            "written by cnnlab-train."
        )
    return checkpoint


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]


def load_checkpoint(path: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    """The run config stored in a cnnlab checkpoint, and the checkpoint itself.

    The config is checked against :mod:`cnnlab.training.safe_config` before it becomes a
    ``DictConfig``, so nothing it names can be built unless it is on the allow-list.
    """
    ckpt_file = find_checkpoint(path)
    checkpoint = read_checkpoint(ckpt_file)
    if "cnnlab_config" not in checkpoint:
        raise CheckpointError(
            f"{ckpt_file} has no 'cnnlab_config': it was not written by cnnlab-train, so its "
            "run cannot be rebuilt. Train it with cnnlab-train or load its weights by hand."
        )
    config = checkpoint["cnnlab_config"]
    if not isinstance(config, dict):
        raise CheckpointError(f"{ckpt_file}: 'cnnlab_config' is not a mapping.")
    check_config(config, str(ckpt_file))
    return OmegaConf.create(config), checkpoint


def check_fits(
    module: nn.Module, state_dict: dict[str, Any], source: str | Path, what: str, fix: str
) -> None:
    """Raise a one-line :class:`CheckpointError` naming the keys or shapes of ``state_dict``
    that do not fit ``module`` (``what``), then ``fix``; ``load_state_dict``'s own is a page."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [
        f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}"
        for k, v in own.items()
        if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or reshaped:
        parts = [
            f"{len(found)} {label} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
            for label, found in (
                ("missing key(s)", missing),
                ("unexpected key(s)", unexpected),
                ("shape mismatch(es), checkpoint vs model:", reshaped),
            )
            if found
        ]
        raise CheckpointError(f"checkpoint {source} does not fit {what}: {'; '.join(parts)}. {fix}")


def load_weights(module: nn.Module, state_dict: dict[str, Any], source: str | Path) -> None:
    """``module.load_state_dict`` that says in one line which keys or shapes do not fit."""
    check_fits(
        module,
        state_dict,
        source,
        "the model its config describes",
        "Evaluate it with the model and data it was trained with: drop model.* and data "
        "overrides that change a layer's shape (classes, input channels, image size).",
    )
    module.load_state_dict(state_dict)


def check_resumable(module: nn.Module, ckpt_path: str | Path) -> None:
    """A run continues only with weights of its own shapes; Lightning would fail with a page
    of ``size mismatch`` lines after the data is loaded and the loggers are started."""
    if is_url(ckpt_path):  # Lightning downloads it; read once, by Lightning
        return
    check_fits(
        module,
        read_checkpoint(ckpt_path)["state_dict"],
        ckpt_path,
        "this run's model",
        "Continue it with the model and data it was trained with (model.impl may change): drop "
        "the model.* and data overrides that change a layer's shape, or start a new run "
        "without ckpt_path.",
    )


def load_run(
    path: str | Path,
) -> tuple[DictConfig, ClassificationModule, L.LightningDataModule]:
    """Rebuild a trained run (config, module with its weights, data module) from its folder."""
    cfg, checkpoint = load_checkpoint(path)
    validate_config(cfg, resume=False)  # its ckpt_path is history, not something to read
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    load_weights(module, checkpoint["state_dict"], find_checkpoint(path))
    module.eval()
    return cfg, module, datamodule
