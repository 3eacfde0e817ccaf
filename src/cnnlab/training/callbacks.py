"""Callbacks that make failed, interrupted or resumed runs leave something trustworthy behind."""

from __future__ import annotations

import logging
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot recover by itself."""


class StopOnNonFiniteLoss(Callback):
    """Stop training once the loss has been NaN/inf, before any checkpoint holds broken weights.

    Reading a GPU loss on the host every step would stall the device, so each step only folds
    ``isfinite(loss)`` into a flag that stays on the device; the flag is read every
    ``trainer.log_every_n_steps`` steps, before validation, at the end of every epoch and
    whenever a checkpoint is about to be written. Raising (rather than setting
    ``trainer.should_stop``) skips the end-of-epoch hooks, and the check in
    ``on_save_checkpoint`` refuses any checkpoint taken after a non-finite step, so
    ``best.ckpt``/``last.ckpt`` keep the last finite state. The decision is reduced over all
    processes so DDP ranks stop together.
    """

    def __init__(self) -> None:
        self._bad: torch.Tensor | None = None  # any non-finite loss since the last check
        self._value: torch.Tensor | None = None  # the first such loss
        self._index: torch.Tensor | None = None  # its position in ``_where``
        self._where: list[tuple[int, int]] = []  # (epoch, global step) of each unchecked step

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
        loss = loss.detach().float()
        bad_now = ~torch.isfinite(loss).all()
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._value = torch.zeros((), device=loss.device)
            self._index = torch.zeros((), dtype=torch.long, device=loss.device)
        first = bad_now & ~self._bad
        self._value = torch.where(first, loss.reshape(-1)[0], self._value)
        self._index = torch.where(first, len(self._where), self._index)
        self._bad = self._bad | bad_now
        self._where.append((trainer.current_epoch, trainer.global_step))
        if len(self._where) >= max(1, trainer.log_every_n_steps):
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # an interrupted run saves without the other ranks: no collective then
        self.check(trainer, sync=not trainer.interrupted)

    def check(self, trainer: L.Trainer, sync: bool = True) -> None:
        """Read the flag (one host-device sync) and raise if any step since the last check
        had a non-finite loss. A no-op, without a sync, when no step ran since."""
        if not self._where or self._bad is None:
            return
        bad = bool(self._bad)
        if sync:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        where, self._where = self._where, []
        if not bad:
            return
        if bool(self._bad):  # this rank saw it: report its own first bad step
            value = float(self._value)
            epoch, step = where[int(self._index)]
        else:  # another rank did
            value, (epoch, step) = float("nan"), where[-1]
        checkpoint = trainer.checkpoint_callback
        kept = (
            f"last good checkpoint kept in {checkpoint.dirpath}"
            if checkpoint is not None and (checkpoint.last_model_path or checkpoint.best_model_path)
            else "no checkpoint was written yet (it diverged in the first epoch)"
        )
        raise NonFiniteLossError(
            f"train loss became {value} at epoch {epoch}, step {step}; training stopped, "
            f"{kept}. Lower optimizer.lr, clip gradients (trainer.gradient_clip_val=1.0) or "
            "train in trainer.precision=32."
        )


class SaveOnInterrupt(Callback):
    """Ctrl-C during ``fit`` stops at the next batch boundary and writes ``last.ckpt`` there.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be; inside a
    ``__del__``, a weakref callback or a library's ``except`` it is printed and dropped, and the
    run trains on and exits 0. So while fitting, SIGINT only sets a flag; the next batch hook
    raises ``KeyboardInterrupt`` from a known place, Lightning's interrupt handling runs
    (``on_exception`` here saves the checkpoint) and the command exits 1. A second Ctrl-C
    interrupts at once, the way Python always does.
    """

    def __init__(self, dirpath: str, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.saved = False
        self._requested = False
        self._previous_handler: Any = None

    # -- deferring SIGINT to a batch boundary ---------------------------------------------------
    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._requested:  # second Ctrl-C: no more waiting
            raise KeyboardInterrupt
        self._requested = True
        log.warning(
            "Ctrl-C: stopping after this batch and saving %s (Ctrl-C again to abort)", self.path
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():
            self._requested = False
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()
        self._raise_if_requested()  # Ctrl-C after the last batch still stops the command

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def _raise_if_requested(self) -> None:
        if self._requested:
            self._requested = False
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._raise_if_requested()

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._raise_if_requested()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_requested()

    # -- saving ---------------------------------------------------------------------------------
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore_handler()
        self._requested = False
        if not isinstance(exception, KeyboardInterrupt) or trainer.state.fn != "fit":
            return
        if trainer.sanity_checking:  # nothing trained yet: keep the last.ckpt that is there
            return
        try:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        except NonFiniteLossError:
            log.warning("Interrupted after the loss became NaN/inf: %s not overwritten.", self.path)
            return
        trainer.strategy.save_checkpoint(checkpoint, self.path)
        self.saved = True
        if trainer.is_global_zero:
            log.warning("Interrupted: saved %s; resume with ckpt_path=%s", self.path, self.path)


# -- exact resume ---------------------------------------------------------------------------------
def capture_rng_states() -> dict[str, Any]:
    """Every RNG a training step or data loader draws from, as ``weights_only``-loadable data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class ExactResume(Callback):
    """Make a run resumed from an epoch-end checkpoint continue exactly as if never stopped.

    Every checkpoint stores the torch, CUDA, numpy and Python RNG states at the moment it is
    written; they decide the next epoch's data order (the shuffling sampler and the loader's
    worker seeds draw from torch's global generator), augmentation and dropout. They are put
    back as soon as Lightning restores the callbacks: the next thing that draws from them is the
    train loader's iterator, which a resumed Lightning 2.6 run creates once in
    ``FitLoop.setup_data`` and reuses for its first epoch (the sanity check in between runs
    under ``isolate_rng``). Everything else (weights, optimizer and scheduler states, loop
    progress, callback states) is in Lightning's own checkpoint.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"rng": capture_rng_states()}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # The loggers buffer rows (the CSV logger writes every 100 steps): flush them before the
        # checkpoint reaches the disk, or a kill right after it loses the rows it already
        # reflects, and the resumed run's history skips them.
        for logger in trainer.loggers:
            logger.save()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rng" in state_dict:
            restore_rng_states(state_dict["rng"])
