"""cnnlab-eval: test a trained checkpoint under the exact config it was trained with.

    cnnlab-eval ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt
    cnnlab-eval ckpt_path=outputs/train/runs/<time> data.batch_size=512 trainer=cpu

The config comes from ``checkpoint["cnnlab_config"]``; only what is named on the command line
changes, so an evaluation cannot silently differ from its run in data split, model or loss.
Where things are *written* is never taken from the checkpoint: paths, loggers, callbacks and the
trainer's root folder are this evaluation's own, so the training run's folder stays untouched
(and a checkpoint from elsewhere cannot point its writes anywhere). Its config is checked against
:mod:`cnnlab.training.safe_config` before anything is built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.paths import CONF_DIR
from cnnlab.training.builders import (
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    checkpoint_of,
    load_checkpoint,
    load_weights,
    plain,
    progress_callbacks,
)
from cnnlab.training.ddp import use_job_subprocess_command
from cnnlab.training.errors import user_errors_as_messages
from cnnlab.training.results import format_metrics, write_metrics
from cnnlab.training.tracking import finish_tracking, start_tracking
from cnnlab.training.validate import check_accelerator, validate_config

log = logging.getLogger(__name__)

#: keys that always describe this evaluation, never the training run: everything that says
#: where files go (a stored config holds the training run's absolute folders)
_OWN_KEYS = ("paths", "task_name", "ckpt_path", "logger", "callbacks")


def run_config(cfg: DictConfig, trained: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """The trained run's config with the command-line ``overrides`` (already composed into
    ``cfg``) applied on top; whole groups (``trainer=cpu``) and single keys both work."""
    merged = OmegaConf.create(plain(trained))
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if key.startswith("hydra") or key.split(".")[0] in _OWN_KEYS:
            continue
        OmegaConf.update(merged, key, plain(OmegaConf.select(cfg, key)), merge=False)
    with open_dict(merged):
        for key in _OWN_KEYS:
            merged[key] = plain(cfg.get(key))
        merged.trainer.default_root_dir = plain(cfg.trainer.default_root_dir)
    return merged


def evaluate(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, float]:
    """Test ``cfg.ckpt_path`` and record the result in this evaluation's run folder."""
    started = time.perf_counter()
    validate_config(cfg, resume=False)
    ckpt_file = checkpoint_of(cfg)
    trained, checkpoint = load_checkpoint(ckpt_file)
    run_cfg = run_config(cfg, trained, overrides)
    validate_config(run_cfg, resume=False)
    check_accelerator(run_cfg)
    datamodule = build_datamodule(run_cfg)
    module = build_module(run_cfg, datamodule)
    load_weights(module, checkpoint["state_dict"], ckpt_file)
    loggers = build_loggers(run_cfg)
    start_tracking(loggers, plain(run_cfg))  # logger=mlflow|wandb: this evaluation's config
    trainer = build_trainer(run_cfg, datamodule, progress_callbacks(run_cfg), loggers)
    (metrics,) = trainer.test(module, datamodule=datamodule)
    finish_tracking(loggers)
    if rank_zero_only.rank == 0:
        write_metrics(
            run_cfg.paths.output_dir,
            run_cfg,
            status="ok",
            metrics=metrics,
            wall_time_s=time.perf_counter() - started,
            checkpoint=str(ckpt_file.resolve()),
            confusion_matrix=module.test_confusion_matrix,
        )
        log.info(
            "Test metrics of %s:\n%s\nRun folder: %s",
            ckpt_file,
            format_metrics(metrics),
            run_cfg.paths.output_dir,
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def main(cfg: DictConfig) -> float:
    use_job_subprocess_command("cnnlab.eval")
    with user_errors_as_messages():
        metrics = evaluate(cfg, HydraConfig.get().overrides.task)
    return float(metrics["test/acc"])


if __name__ == "__main__":
    main()
