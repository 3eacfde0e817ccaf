"""MLflow and Weights & Biases loggers: the run's config, metrics, plots and best checkpoint.

Lightning's ``MLFlowLogger`` and ``WandbLogger`` already stream metrics and upload
checkpoints (``log_model``); cnnlab adds what they cannot know on their own:

- the resolved run config as flat params (``model.impl``, ``optimizer.lr``, ...), logged once
  when the run starts (:func:`start_tracking`): cnnlab's module keeps its hyperparameters out of
  the loggers (``save_hyperparameters(logger=False)``), so this is the one place they go in;
- only ``best.ckpt`` is uploaded with ``log_model: true`` -- Lightning would take whichever
  ``ModelCheckpoint`` saved last, which is cnnlab's ``last.ckpt``;
- the end-of-run plots (``<run>/viz/*.png``), which are drawn after the trainer is done, are
  uploaded by :func:`finish_tracking` before the tracking run is closed; a failed or
  interrupted fit closes it as failed through Lightning's own ``finalize("failed")``;
- a run continued in place (``ckpt_path=<run>/checkpoints/last.ckpt``) goes on in the same
  MLflow run (found by its ``cnnlab.run_dir`` tag) or W&B run (its id is derived from the run
  folder).

Both libraries are optional (``pip install 'cnnlab[track]'``); asking for one that is missing
is a one-line error, before anything is trained.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _flatten_dict
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.loggers import MLFlowLogger as _MLFlowLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cnnlab.training.errors import UserError

log = logging.getLogger(__name__)

RUN_DIR_TAG = "cnnlab.run_dir"
VIZ_DIR = "viz"


class TrackingUnavailableError(UserError):
    """A tracking logger was asked for but its package is not installed or it cannot log in."""


def require(package: str, logger: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise TrackingUnavailableError(
            f"logger={logger} needs {package}: pip install 'cnnlab[track]'"
        )


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model": {"impl": "custom"}}`` -> ``{"model.impl": "custom"}`` (Hydra's override spelling)."""
    return _flatten_dict(dict(config), delimiter=".")


def readable_run_name(run_dir: str | Path | None) -> str | None:
    """A readable name for a run folder: ``<time>`` for a run, ``<time>/<job>`` in a sweep."""
    if not run_dir:
        return None
    parts = Path(run_dir).parts
    for anchor in ("multiruns", "runs"):
        if anchor in parts:
            return "/".join(parts[len(parts) - parts[::-1].index(anchor) :]) or None
    return Path(run_dir).name


def _keep_best_only(log_model: Any, checkpoint_callback: ModelCheckpoint) -> bool:
    """With ``log_model: true`` only the monitored checkpoint (``best.ckpt``) is uploaded."""
    return log_model is True and not getattr(checkpoint_callback, "monitor", None)


def _viz_pngs(run_dir: str | Path | None) -> list[Path]:
    folder = Path(run_dir) / VIZ_DIR if run_dir else None
    return sorted(folder.glob("*.png")) if folder and folder.is_dir() else []


class MLFlowLogger(_MLFlowLogger):
    """Lightning's ``MLFlowLogger`` for a cnnlab run folder (see the module docstring).

    A ``sqlite:///`` tracking URI's folder is created, and a local ``artifact_location`` is
    made absolute, so the store works from wherever the command starts.
    """

    def __init__(
        self,
        experiment_name: str = "train",
        tracking_uri: str | None = None,
        artifact_location: str | None = None,
        run_dir: str | None = None,
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        log_model: bool | str = True,
        **kwargs: Any,
    ) -> None:
        require("mlflow", "mlflow")
        if tracking_uri and tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///") :]).expanduser().parent.mkdir(
                parents=True, exist_ok=True
            )
        if artifact_location and "://" not in artifact_location:
            artifact_location = Path(artifact_location).expanduser().resolve().as_uri()
        self.run_dir = str(run_dir) if run_dir else None
        tags = dict(tags or {})
        if self.run_dir:
            tags.setdefault(RUN_DIR_TAG, str(Path(self.run_dir).resolve()))
        super().__init__(
            experiment_name=experiment_name,
            run_name=run_name or readable_run_name(run_dir),
            tracking_uri=tracking_uri,
            tags=tags,
            artifact_location=artifact_location,
            log_model=log_model,
            **kwargs,
        )

    def continue_from(self, step: int) -> None:
        """Go on in the MLflow run of the same run folder, if the store has one."""
        if not self.run_dir or self._run_id is not None:
            return
        client = self._mlflow_client
        experiment = client.get_experiment_by_name(self._experiment_name)
        if experiment is None:
            return
        folder = str(Path(self.run_dir).resolve()).replace("'", "\\'")
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{RUN_DIR_TAG}` = '{folder}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            self._run_id = runs[0].info.run_id
            self._continued = True
            client.update_run(self._run_id, status="RUNNING")
            log.info("MLflow: continuing run %s from step %d", self._run_id, step)

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if not _keep_best_only(self._log_model, checkpoint_callback):
            super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def log_config(self, config: Mapping[str, Any]) -> None:
        """The config as params; in a continued run, values changed by the new overrides
        (``trainer.max_epochs=20``) become ``resumed.<key>`` tags, since MLflow params are
        write-once."""
        params = flat_config(config)
        if getattr(self, "_continued", False):
            logged = self.experiment.get_run(self.run_id).data.params
            changed = {k: v for k, v in params.items() if k in logged and logged[k] != str(v)[:250]}
            for key, value in changed.items():
                self.experiment.set_tag(self.run_id, f"resumed.{key}", str(value)[:5000])
            params = {k: v for k, v in params.items() if k not in logged}
        if params:
            self.log_hyperparams(params)

    @rank_zero_only
    def log_run_files(self) -> None:
        """Upload ``<run>/viz/`` (plots and their tables) as the run's ``viz`` artifacts."""
        folder = Path(self.run_dir) / VIZ_DIR if self.run_dir else None
        if folder and folder.is_dir() and any(folder.iterdir()):
            self.experiment.log_artifacts(self.run_id, str(folder), VIZ_DIR)

    @rank_zero_only
    def close(self) -> None:
        if self._initialized:
            self.experiment.set_terminated(self.run_id, "FINISHED")


class WandbLogger(_WandbLogger):
    """Lightning's ``WandbLogger`` for a cnnlab run folder (see the module docstring).

    ``offline: true`` (the default) runs W&B in offline mode through ``wandb.init(mode=...)``
    rather than Lightning's ``offline`` flag, which forbids ``log_model``: offline runs keep
    their checkpoint artifact and upload it with ``wandb sync <run>/wandb/offline-run-*``.
    The run id is derived from the run folder, so a run continued in place continues its W&B
    run (``resume: allow``).
    """

    def __init__(
        self,
        project: str = "cnnlab",
        entity: str | None = None,
        save_dir: str = ".",
        offline: bool = True,
        run_dir: str | None = None,
        name: str | None = None,
        log_model: bool | str = True,
        **kwargs: Any,
    ) -> None:
        require("wandb", "wandb")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.run_dir = str(run_dir) if run_dir else None
        if self.run_dir and "id" not in kwargs and "version" not in kwargs:
            folder = str(Path(self.run_dir).resolve()).encode()
            kwargs["id"] = hashlib.sha256(folder).hexdigest()[:16]
        kwargs.setdefault("mode", "offline" if offline else "online")
        super().__init__(
            project=project,
            entity=entity,
            save_dir=save_dir,
            name=name or readable_run_name(run_dir),
            log_model=log_model,
            **kwargs,
        )
        if self._wandb_init.get("anonymous") is None:  # wandb warns about it even when unset
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self) -> Any:
        """Lightning's W&B run; W&B's refusal to start one (no login for an online run) is a
        user error with the ways out, not a traceback from inside ``wandb.init``."""
        from wandb.errors import UsageError

        try:
            return super().experiment
        except UsageError as err:
            raise TrackingUnavailableError(
                f"W&B refused to start the run ({' '.join(str(err).split())}): for "
                "logger.wandb.offline=false log in first (`wandb login`, or set WANDB_API_KEY), "
                "or log offline with logger.wandb.offline=true and upload later with `wandb sync`."
            ) from None

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if not _keep_best_only(self._log_model, checkpoint_callback):
            super().after_save_checkpoint(checkpoint_callback)

    @rank_zero_only
    def log_config(self, config: Mapping[str, Any]) -> None:
        self.log_hyperparams(flat_config(config))

    @rank_zero_only
    def log_run_files(self) -> None:
        """The plots as W&B images, one key each (``viz/confusion_matrix``, ...)."""
        pngs = _viz_pngs(self.run_dir)
        if pngs:
            import wandb

            self.experiment.log({f"{VIZ_DIR}/{png.stem}": wandb.Image(str(png)) for png in pngs})

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status != "success":  # a failed or interrupted fit: nothing more will be logged
            self._finish(exit_code=1)

    @rank_zero_only
    def close(self) -> None:
        self._finish(exit_code=0)

    def _finish(self, exit_code: int) -> None:
        if self._experiment is not None and not getattr(self, "_finished", False):
            self._experiment.finish(exit_code=exit_code)
            self._finished = True  # the next WandbLogger in this process starts a new run


TRACKING_LOGGERS = (MLFlowLogger, WandbLogger)


def _tracking(loggers: Iterable[Logger]) -> list[MLFlowLogger | WandbLogger]:
    return [logger for logger in loggers if isinstance(logger, TRACKING_LOGGERS)]


def start_tracking(loggers: Iterable[Logger], config: Mapping[str, Any]) -> None:
    """Log the resolved run ``config`` as params to every tracking logger."""
    for logger in _tracking(loggers):
        logger.log_config(config)


def finish_tracking(loggers: Iterable[Logger]) -> None:
    """Upload the run's plots (drawn after training) and close every tracking run.

    An upload error is logged, never fatal: the run folder holds everything anyway.
    """
    for logger in _tracking(loggers):
        try:
            logger.log_run_files()
        except Exception:
            log.exception("Uploading the plots to %s failed.", type(logger).__name__)
        logger.close()
