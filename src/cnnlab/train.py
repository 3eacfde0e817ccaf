"""cnnlab-train: fit a model on a dataset, test its best checkpoint, record the run.

    cnnlab-train                                   # digits, seed_cnn, hand-written layers
    cnnlab-train model.impl=builtin optimizer=sgd
    cnnlab-train -m model.impl=custom,builtin optimizer=sgd,adam
    cnnlab-train trainer=ddp_cpu
    cnnlab-train ckpt_path=outputs/train/runs/<time> trainer.max_epochs=20   # continue that run

Every run, even a failed, diverged or interrupted one, leaves ``metrics.json`` in its folder;
inside a ``-m`` sweep a failing job is recorded and the sweep goes on (and exits 1 at its end).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig

from cnnlab.paths import CONF_DIR
from cnnlab.training.atomic import AtomicCheckpointIO, WriteError
from cnnlab.training.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    check_resumable,
    plain,
)
from cnnlab.training.callbacks import NonFiniteLossError
from cnnlab.training.cluster import rank_argv
from cnnlab.training.ddp import isolated_job, use_job_subprocess_command
from cnnlab.training.errors import UserError, user_errors_as_messages, user_message, verbose
from cnnlab.training.module import ClassificationModule
from cnnlab.training.results import EarlierRecord, format_metrics, write_metrics
from cnnlab.training.resume import continue_logs, resolve_checkpoint, resume_argv, run_folder_of
from cnnlab.training.tracking import finish_tracking, start_tracking
from cnnlab.training.validate import check_accelerator, validate_config

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> tuple[dict[str, Any], ClassificationModule, L.LightningDataModule]:
    """Fit, then test the best checkpoint; return the final metrics, module and data module."""
    validate_config(cfg)
    check_accelerator(cfg)
    L.seed_everything(cfg.seed, workers=True)
    log.info("Data: %s", cfg.data._target_)
    datamodule = build_datamodule(cfg)
    log.info("Model: %s (impl=%s)", cfg.model._target_, cfg.model.impl)
    module = build_module(cfg, datamodule)
    ckpt_path = resolve_checkpoint(str(cfg.ckpt_path)) if cfg.get("ckpt_path") else None
    if ckpt_path:
        check_resumable(module, ckpt_path)
    loggers = build_loggers(cfg)
    continuing = (
        bool(ckpt_path) and run_folder_of(ckpt_path) == Path(cfg.paths.output_dir).resolve()
    )
    if continuing:  # the same run, continued in its own folder
        continue_logs(loggers, ckpt_path)
    start_tracking(loggers, plain(cfg))  # MLflow / W&B: the run's config as params
    trainer = build_trainer(cfg, datamodule, build_callbacks(cfg), loggers)
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    with warnings.catch_warnings():
        if continuing:  # of course it is not empty: it holds the run being continued
            warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
        # weights_only also for URLs, where Lightning would default to unpickling anything
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    best_checkpoint = monitored_checkpoint(trainer)
    best_score = best_checkpoint.best_model_score if best_checkpoint else None
    if best_score is not None and best_checkpoint.monitor == "val/acc":
        metrics["val/acc_best"] = float(best_score)  # the score of the weights best.ckpt holds

    if cfg.get("test"):
        best = best_checkpoint.best_model_path if best_checkpoint else ""
        if not best:
            log.warning("No best checkpoint (e.g. fast_dev_run): testing the current weights.")
        (test_metrics,) = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update(test_metrics)
    return metrics, module, datamodule


def monitored_checkpoint(trainer: L.Trainer) -> ModelCheckpoint | None:
    """The ``ModelCheckpoint`` that keeps ``best.ckpt`` (the one with a ``monitor``)."""
    return next((c for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)), None)


def render_plots(cfg: DictConfig, module: ClassificationModule, datamodule: Any) -> None:
    """End-of-run plots, when ``viz.enabled``; a plotting error is logged, never fatal."""
    viz_cfg = cfg.get("viz")
    if not viz_cfg or not viz_cfg.get("enabled", False):
        return
    try:
        from cnnlab.viz import render_run
    except ImportError:
        log.warning("viz.enabled is set but cnnlab.viz.render_run is not available; no plots.")
        return
    try:
        render_run(cfg.paths.output_dir, viz_cfg, module=module, datamodule=datamodule)
    except Exception:
        log.exception("Plotting failed; the run itself is complete.")


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float:
    """The value a sweeper optimizes: the run's ``optimized_metric``, else ``val/acc_best``
    (NaN when the run has none, e.g. ``fast_dev_run``)."""
    name = cfg.get("optimized_metric")
    if name is None:
        return float(metrics.get("val/acc_best", math.nan))
    if name not in metrics:
        raise UserError(
            f"optimized_metric={name} is not a metric of this run; it has "
            f"{', '.join(sorted(metrics)) or 'none'}: set optimized_metric to one of them."
        )
    return float(metrics[name])


def run(cfg: DictConfig) -> float:
    """Train one job and record it; return its ``objective`` (NaN when the job did not finish).

    In a ``-m`` sweep a failure is recorded and NaN returned so the other jobs still run; in a
    single run it is re-raised so the command exits non-zero.
    """
    in_sweep = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = cfg.paths.output_dir
    started = time.perf_counter()
    earlier = EarlierRecord.of(run_dir)  # a run being continued in its own folder

    def record(
        status: str, metrics: dict[str, Any], error: str | None = None, **extra: Any
    ) -> None:
        if cfg.get("ckpt_path"):
            extra.setdefault("resumed_from", str(cfg.ckpt_path))
        if rank_zero_only.rank != 0:
            return
        if status != "ok" and earlier is not None and earlier.untouched():
            earlier.keep(error or status)
            log.warning("The run's checkpoints are as they were: metrics.json keeps its results.")
            return
        wall_time_s = time.perf_counter() - started
        try:
            write_metrics(
                run_dir,
                cfg,
                status=status,
                metrics=metrics,
                error=error,
                wall_time_s=wall_time_s,
                **extra,
            )
        except WriteError as err:
            if status == "ok":
                raise
            log.error("%s", err)  # the run's own error is the one to report

    with isolated_job():
        try:
            metrics, module, datamodule = train(cfg)
        except (KeyboardInterrupt, SystemExit) as exc:  # Lightning turns Ctrl-C into exit(1)
            resume = f"resume with ckpt_path={run_dir}/checkpoints/last.ckpt"
            record("interrupted", {}, f"interrupted ({exc!r}); {resume}")
            raise
        except Exception as exc:
            diverged = isinstance(exc, NonFiniteLossError)
            message = user_message(exc)  # a user error's line says what to fix
            error = str(exc) if diverged else message or repr(exc)  # a bug's repr keeps its type
            record("nan" if diverged else "failed", {}, error)
            if not in_sweep:
                raise
            if message is None or verbose():
                log.exception("Job did not finish; the sweep goes on.")
            else:  # the config or the data: the message says it all
                log.error("Job did not finish: %s The sweep goes on.", message)
            return math.nan

    if rank_zero_only.rank == 0:
        render_plots(cfg, module, datamodule)
        finish_tracking(module.loggers)  # MLflow / W&B: upload the plots, close the run
        log.info("Test metrics:\n%s\nRun folder: %s", format_metrics(metrics), run_dir)
    record("ok", metrics, confusion_matrix=module.test_confusion_matrix)
    return objective(cfg, metrics)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    use_job_subprocess_command("cnnlab.train")
    with user_errors_as_messages():
        return run(cfg)


def main() -> None:
    """``cnnlab-train``; ``ckpt_path=<run>/checkpoints/last.ckpt`` continues that run in place."""
    sys.argv[1:] = rank_argv(resume_argv(sys.argv[1:]))  # rank_argv: torchrun/srun ranks > 0
    # conf/hydra/launcher/submitit_*.yaml replace the plugin's configs of the same name (full
    # files, so valid with or without Hydra's deprecated same-name schema check)
    warnings.filterwarnings("ignore", r"\s*'hydra/launcher/submitit_\w+' is validated against")
    _hydra_main()


if __name__ == "__main__":
    main()
