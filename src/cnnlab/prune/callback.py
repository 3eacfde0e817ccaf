"""``callbacks=prune``: train a network while pruning it, one-shot or gradually.

Why not Lightning's ``ModelPruning``: it applies ``torch.nn.utils.prune`` again every epoch, and
each application prunes a fraction of the weights *still left*, so a sparsity schedule has to
be turned into per-step fractions that only hold while the masks live in memory -- a resumed
run (whose checkpoints hold baked weights, no masks) would land on another sparsity. It also
prunes at the *end* of an epoch, after that epoch's validation, so ``best.ckpt`` would be
scored unpruned, and its structured pruning leaves biases and batch norms of removed channels
alive. Here the masks are recomputed from scratch for the schedule's total sparsity at the
*start* of each epoch (:func:`cnnlab.prune.masks.prune_model`), so every validation score and
checkpoint belongs to the pruned network, and resuming needs no state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from cnnlab.prune import masks as M
from cnnlab.prune.options import (
    LAYERS,
    METHODS,
    SCHEDULES,
    SCOPES,
    PruneConfigError,
    check_amount,
    check_choice,
    check_layers,
)

log = logging.getLogger(__name__)


def scheduled_sparsity(
    epoch: int, amount: float, schedule: str, start_epoch: int, end_epoch: int
) -> float:
    """Total sparsity during ``epoch`` (0-based).

    ``once``: ``amount`` from ``start_epoch`` on. ``gradual``: the cubic ramp of Zhu & Gupta
    (2017), ``s = amount * (1 - (1 - t)^3)`` with ``t`` going from 1/(n) at ``start_epoch`` to 1
    at ``end_epoch`` (n = end - start + 1 steps): it prunes fast while many redundant weights
    are left, then slowly, and holds ``amount`` after ``end_epoch``.
    """
    if epoch < start_epoch:
        return 0.0
    if schedule == "once" or epoch >= end_epoch:
        return amount
    t = (epoch - start_epoch + 1) / (end_epoch - start_epoch + 1)
    return amount * (1.0 - (1.0 - t) ** 3)


def forget_best(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
    """Start ``best.ckpt`` (and ``val/acc_best``) afresh at the first epoch at full sparsity, so
    the final test scores the pruned network, not a denser epoch that validated better."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "monitor", None):
            callback.best_k_models = {}
            callback.best_model_score = None
            callback.best_model_path = ""
            callback.kth_best_model_path = ""
            callback.kth_value = callback.kth_value.new_tensor(
                float("inf") if callback.mode == "min" else -float("inf")
            )
    best = getattr(pl_module, "val_acc_best", None)
    if best is not None:
        best.reset()


class Pruning(Callback):
    """Mask the smallest weights (``unstructured``) or lowest-L1 channels (``structured``) of
    the ``layers`` while training, to ``amount`` by ``end_epoch``.

    Checkpoints hold the masked weights baked in (``torch.nn`` keys, ``weights_only``-loadable);
    at the end of training the masks are made permanent. ``best.ckpt`` is chosen among the
    epochs at the full ``amount`` (the ranking restarts at the first of them).
    """

    def __init__(
        self,
        amount: float = 0.5,
        method: str = "unstructured",
        scope: str = "layer",
        layers: Sequence[str] = LAYERS,
        schedule: str = "gradual",
        start_epoch: int = 0,
        end_epoch: int | None = None,
    ) -> None:
        self.amount = check_amount(amount, "callbacks.prune.amount")
        self.method = check_choice(method, METHODS, "callbacks.prune.method")
        self.scope = check_choice(scope, SCOPES, "callbacks.prune.scope")
        self.layers = check_layers(layers, "callbacks.prune.layers")
        self.schedule = check_choice(schedule, SCHEDULES, "callbacks.prune.schedule")
        for key, value in (("start_epoch", start_epoch), ("end_epoch", end_epoch)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise PruneConfigError(
                    f"callbacks.prune.{key}={value!r} is not valid: expected an epoch number >= 0."
                )
        if end_epoch is not None and end_epoch < start_epoch:
            raise PruneConfigError(
                f"callbacks.prune.end_epoch={end_epoch} is before start_epoch={start_epoch}: "
                "the ramp must end at or after its start."
            )
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.current = 0.0

    def last_epoch(self, trainer: L.Trainer) -> int:
        """``end_epoch``, or the run's last epoch when it is null."""
        if self.end_epoch is not None:
            return self.end_epoch
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise PruneConfigError(
                "callbacks.prune.end_epoch=null needs trainer.max_epochs >= 1 to know the last "
                "epoch: set callbacks.prune.end_epoch=<epoch>."
            )
        return max(self.start_epoch, max_epochs - 1)

    def first_full_epoch(self, trainer: L.Trainer) -> int:
        return self.start_epoch if self.schedule == "once" else self.last_epoch(trainer)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.last_epoch(trainer)  # fail before the first batch, not at the ramp's end

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        target = scheduled_sparsity(
            epoch, self.amount, self.schedule, self.start_epoch, self.last_epoch(trainer)
        )
        if epoch == self.first_full_epoch(trainer) and target > 0:
            forget_best(trainer, pl_module)
        if target == 0.0 and self.current == 0.0:
            return
        model = getattr(pl_module, "model", pl_module)
        M.prune_model(model, target, self.method, self.scope, self.layers)
        self.current = target
        modules = [m for _, m in M.prunable_layers(model, self.layers, self.method == "structured")]
        reached = M.weight_sparsity(modules)
        log.info(
            "Pruning (%s, %s): epoch %d trains at %.1f %% sparsity (%d of %d weights zero)",
            self.method,
            self.scope,
            epoch,
            100 * reached.fraction,
            reached.zeros,
            reached.total,
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        modules = [m for _, m in M.prunable_layers(model, self.layers, self.method == "structured")]
        pl_module.log(
            "prune/sparsity", M.weight_sparsity(modules).fraction, on_step=False, on_epoch=True
        )

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["state_dict"] = M.baked_state_dict(checkpoint["state_dict"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        M.bake(pl_module)  # plain parameters again: trainer.test loads best.ckpt into them

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        M.bake(pl_module)
