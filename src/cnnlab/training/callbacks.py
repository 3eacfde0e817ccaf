"""Callbacks that make failed or interrupted runs leave something useful behind."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot recover by itself."""


class StopOnNonFiniteLoss(Callback):
    """Stop training the moment the loss is NaN/inf, before any checkpoint holds broken weights.

    Raising (rather than setting ``trainer.should_stop``) skips the end-of-epoch hooks, so
    ``ModelCheckpoint`` never writes the diverged weights and ``best.ckpt``/``last.ckpt`` keep
    the last finite state. The decision is reduced over all processes so DDP ranks stop together.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        value = math.nan if finite else loss.detach().float().item()
        checkpoint = trainer.checkpoint_callback
        kept = (
            f"last good checkpoint kept in {checkpoint.dirpath}"
            if checkpoint is not None and checkpoint.last_model_path
            else "no checkpoint was written yet (it diverged in the first epoch)"
        )
        raise NonFiniteLossError(
            f"train loss became {value} at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}; training stopped, {kept}. Lower optimizer.lr, clip "
            "gradients (trainer.gradient_clip_val=1.0) or train in trainer.precision=32."
        )


class SaveOnInterrupt(Callback):
    """On Ctrl-C during ``fit``, write ``last.ckpt`` with the current state so the run resumes.

    Lightning saves nothing when interrupted; the checkpoint is written without a barrier
    because the other DDP ranks are being interrupted too.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved = False

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        trainer.strategy.save_checkpoint(checkpoint, self.path)
        self.saved = True
        if trainer.is_global_zero:
            log.warning("Interrupted: saved %s; resume with ckpt_path=%s", self.path, self.path)
