"""``cnnlab-compare [model=vgg] [data=digits] [dtype=float64] [mode=layers] ...``

Composes ``conf/compare.yaml`` (the same ``data``/``model`` groups as training) and writes
``report.md``, ``report.csv`` and figures into its Hydra run folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cnnlab.compare import environment
from cnnlab.compare.optimizers import compare_optimizers
from cnnlab.compare.runner import Setup, compare_layers, compare_training
from cnnlab.compare.writer import write_report
from cnnlab.machine import set_tf32
from cnnlab.paths import CONF_DIR
from cnnlab.training.errors import user_message, verbose
from cnnlab.training.validate import validate_config

log = logging.getLogger(__name__)
MODES = ("layers", "parity", "both", "optim")


def run(cfg: DictConfig, out_dir: Path) -> Path:
    """The whole comparison for one composed config; returns the report's path."""
    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}.")
    validate_config(cfg, resume=False)  # the data/model keys it shares with training
    device = environment.resolve_device(cfg.device)
    dtype = environment.resolve_dtype(cfg.dtype)
    # cuDNN's default allows TF32 in convolutions but not in matmuls, which the custom conv is
    tf32 = set_tf32(cfg.tf32) if device.type == "cuda" else "n/a (CPU)"
    setup = Setup(device, dtype, environment.autocast_factory(device, dtype, cfg.precision))
    torch.manual_seed(cfg.seed)
    datamodule = instantiate(cfg.data, batch_size=cfg.batch_size)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model = instantiate(
        cfg.model, in_shape=tuple(datamodule.input_shape), num_classes=datamodule.num_classes
    )
    settings = {
        "model": type(model).__name__,
        "data": type(datamodule).__name__,
        "device": device.type,
        "hardware": environment.hardware(device),
        "dtype": cfg.dtype,
        "precision": cfg.precision or "none",
        "tf32 (matmul and cudnn)": tf32,
        "batch_size": cfg.batch_size,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "seed": cfg.seed,
    }
    layers = history = None
    if cfg.mode in ("layers", "both"):
        images, labels = next(iter(datamodule.train_dataloader()))
        log.info("comparing %d layers of %s", sum(1 for _ in model.modules()), settings["model"])
        layers = compare_layers(model, images, labels, setup, cfg.warmup, cfg.repeats)
    if cfg.mode in ("parity", "both"):
        log.info("training parity: %d epoch(s)", cfg.parity.epochs)
        p = cfg.parity
        history = compare_training(
            model, datamodule, setup, p.epochs, p.lr, p.momentum, cfg.seed, p.max_batches
        )
    title = f"cnnlab-compare: {settings['model']} on {settings['data']}, custom vs built-in"
    intro = None
    if cfg.mode == "optim":
        optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
        name = str(optimizer["_target_"]).rsplit(".", 1)[-1]
        settings |= {"optimizer": name, "layers": cfg.model.impl}
        log.info("optimizer parity (%s): %d epoch(s)", name, cfg.parity.epochs)
        history, max_diff = compare_optimizers(
            model, cfg.model.impl, optimizer, datamodule, setup, cfg.parity.epochs, cfg.seed,
            cfg.parity.max_batches,
        )  # fmt: skip
        title = (
            f"cnnlab-compare: {name} by hand (cnnlab.optim) vs torch.optim, "
            f"{settings['model']} ({cfg.model.impl} layers) on {settings['data']}"
        )
        intro = (
            f"Both runs use the same {cfg.model.impl} layers, start from the same weights and "
            "see the same batches; `custom` is stepped by cnnlab.optim, `builtin` by "
            f"torch.optim ({name}, {_options(optimizer)}). Largest weight difference after "
            f"training: max |θ_custom - θ_builtin| = {max_diff:.3g}."
        )
    report = write_report(out_dir, title, settings, layers, history, cfg.parity.tol, intro)
    log.info("report written to %s", report)
    return report


def _options(optimizer: dict) -> str:
    hidden = ("_target_", "_partial_", "impl")
    return ", ".join(f"{k}={v}" for k, v in optimizer.items() if k not in hidden)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    """Console entry point; configuration mistakes end in one readable line, not a traceback."""
    try:
        run(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception as err:
        message = user_message(err) or (str(err) if isinstance(err, ValueError) else None)
        if message is None or verbose():
            raise
        sys.exit(f"Error: cnnlab-compare: {message}")  # once, on stderr, as every command does
