"""The LightningModule that trains any cnnlab model as an image classifier.

It owns the objective (loss + explicit L1/L2 penalties), the metrics and the optimizer and
scheduler wiring, so models stay plain ``nn.Module``s that only map images to logits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor, nn
from torchmetrics import MaxMetric, MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cnnlab.data.mixing import hard_labels
from cnnlab.optim import optimizer_class
from cnnlab.training.compile import CompileOptions, replays_cuda_graphs
from cnnlab.training.errors import UserError
from cnnlab.training.losses import weight_penalty

log = logging.getLogger(__name__)

#: keys in the optimizer/scheduler configs that steer cnnlab, not the torch constructors
_OPTIMIZER_KEYS = ("full_batch", "impl")
_SCHEDULER_KEYS = ("interval",)
#: what the module logs while fitting, for a callback's ``monitor``; checked before a run starts
FIT_METRICS = ("train/loss", "train/acc", "train/loss_step", "val/loss", "val/acc", "val/acc_best")
#: metrics that others log while fitting: LearningRateMonitor (``lr-Adam``), ``compile=...``
#: (``compile/warmup_s``) and ``callbacks=prune`` (``prune/sparsity``)
OTHER_FIT_METRICS = ("lr-", "compile/", "prune/")
#: what ``trainer.test`` adds
TEST_METRICS = ("test/loss", "test/acc", "test/precision", "test/recall", "test/f1")


class ClassificationModule(L.LightningModule):
    """Train ``model`` with ``loss``; log loss/accuracy per epoch and macro scores on test.

    ``optimizer`` and ``scheduler`` are plain dicts of Hydra ``_partial_`` configs, so they go
    into ``hparams`` and checkpoints stay loadable with ``torch.load(weights_only=True)``.
    ``config`` is the whole resolved run config; it is stored as ``checkpoint["cnnlab_config"]``
    so a checkpoint alone rebuilds its run.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: nn.Module,
        num_classes: int,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        l1: float = 0.0,
        l2: float = 0.0,
        compile: CompileOptions | None = None,
        config: Mapping[str, Any] | None = None,
        batch_mix: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=["model", "loss", "config", "compile", "batch_mix"], logger=False
        )
        #: MixUp/CutMix of training batches on their device (``cnnlab.data.mixing``), or None
        self.batch_mix = batch_mix
        #: NHWC model and batches; parameters keep the layout through ``.to(device)`` and loading
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.criterion = loss
        self.config = dict(config) if config is not None else None
        self.compile_options = compile
        #: logits and objective of a batch; ``torch.compile``d in ``setup`` when asked for
        self.logits_and_loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]] = (
            self._logits_and_loss
        )
        self._compiled = False
        self._warmup_started: float | None = None

        def accuracy() -> MulticlassAccuracy:
            return MulticlassAccuracy(num_classes=num_classes, average="micro")

        # Weighted by batch size, so epoch losses are per-image means whatever the batch size.
        # The per-step loss metric skips its NaN scan, a device sync per step; a non-finite
        # loss is caught by StopOnNonFiniteLoss.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.train_acc, self.val_acc = accuracy(), accuracy()
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # in checkpoints, so a resumed run keeps its best
        macro = {"num_classes": num_classes, "average": "macro"}
        self.test_metrics = MetricCollection(
            {
                "acc": accuracy(),
                "precision": MulticlassPrecision(**macro),
                "recall": MulticlassRecall(**macro),
                "f1": MulticlassF1Score(**macro),
            },
            prefix="test/",
        )
        self.test_confusion = MulticlassConfusionMatrix(num_classes=num_classes)
        #: rows = true class, columns = predicted; filled at the end of ``trainer.test``
        self.test_confusion_matrix: list[list[int]] | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def setup(self, stage: str) -> None:
        """Compile forward + loss once (a function, not the modules: ``state_dict`` keys and
        checkpoints stay those of the eager model)."""
        options = self.compile_options
        if options is None or self._compiled:
            return
        self._compiled = True
        log.info("torch.compile(forward + loss, %s)", options.kwargs())
        device_type = self.trainer.strategy.root_device.type
        if options.cudagraphs and not replays_cuda_graphs(options.mode, device_type):
            log.warning(
                "compile.mode=%s replays CUDA graphs on a CUDA GPU only; on %s it compiles "
                "without them.",
                options.mode,
                device_type,
            )
        self.logits_and_loss = torch.compile(self._logits_and_loss, **options.kwargs())

    def _logits_and_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, data loss and the objective (what training minimises: the data loss plus
        the L1/L2 weight penalties). Validation and test report the data loss alone, so runs
        with different penalties compare."""
        if self.memory_format is torch.channels_last:  # batches arrive NCHW from every loader
            images = images.contiguous(memory_format=torch.channels_last)
        logits = self.model(images)
        loss = self.criterion(logits, labels)
        objective = loss
        if self.hparams.l1 or self.hparams.l2:  # the default: no per-step walk over the weights
            objective = loss + weight_penalty(self.model, self.hparams.l1, self.hparams.l2)
        return logits, loss, objective

    # -- train ----------------------------------------------------------------------------------
    def _mark_cudagraph_step(self) -> None:
        """With CUDA graphs, tell the graph trees that a new step begins: the outputs of the
        previous replay (already consumed by then) may be overwritten."""
        if self.compile_options is not None and self.compile_options.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._mark_cudagraph_step()
        if self.compile_options is not None and self._warmup_started is None:
            self._warmup_started = time.perf_counter()

    def on_validation_batch_start(
        self, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._mark_cudagraph_step()

    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._mark_cudagraph_step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the compile warm-up: the first step, compilation of forward and backward included."""
        if self._warmup_started is None or self._warmup_started < 0:
            return
        seconds = time.perf_counter() - self._warmup_started
        self._warmup_started = -1.0  # logged once
        log.info("torch.compile warm-up (first training step, compile included): %.1f s", seconds)
        self.log("compile/warmup_s", seconds, on_step=True, on_epoch=False, rank_zero_only=True)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        if self.batch_mix is not None:  # soft targets for the loss; accuracy on hard labels
            images, labels = self.batch_mix(images, labels)
        logits, _, loss = self.logits_and_loss(images, labels)
        # the weight made on the device: a Python number would be copied there each step
        self.train_loss(loss.detach(), weight=torch.full_like(loss.detach(), len(labels)))
        self.train_acc(logits.argmax(dim=1), hard_labels(labels))
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False)
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    # -- validate: data loss only, so runs with different penalties compare -------------------
    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits, loss, _ = self.logits_and_loss(images, labels)
        self.val_loss(loss, weight=len(labels))
        self.val_acc(logits.argmax(dim=1), labels)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # two batches of an untrained model are not a "best"
            return
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True, prog_bar=True)

    # -- test -----------------------------------------------------------------------------------
    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits, loss, _ = self.logits_and_loss(images, labels)
        preds = logits.argmax(dim=1)
        self.test_loss(loss, weight=len(labels))
        self.test_metrics.update(preds, labels)
        self.test_confusion.update(preds, labels)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_metrics.reset()
        self.test_confusion_matrix = self.test_confusion.compute().cpu().tolist()
        self.test_confusion.reset()

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer_cfg = _without(self.hparams.optimizer, _OPTIMIZER_KEYS)
        # optimizer.impl=custom builds the hand-written twin (no impl: a run from before it)
        optimizer_cfg["_target_"] = optimizer_class(self.hparams.optimizer)
        optimizer = _configured("optimizer", instantiate(optimizer_cfg), params=self.parameters())
        scheduler_cfg = self.hparams.scheduler
        if not scheduler_cfg:
            return optimizer
        interval = scheduler_cfg.get("interval", "epoch")
        scheduler_cfg = _without(scheduler_cfg, _SCHEDULER_KEYS)
        if "total_steps" in scheduler_cfg and scheduler_cfg["total_steps"] is None:
            scheduler_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = _configured("scheduler", instantiate(scheduler_cfg), optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.config is not None:
            checkpoint["cnnlab_config"] = self.config


def _without(config: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {k: v for k, v in config.items() if k not in keys}
    if isinstance(out.get("betas"), list):
        out["betas"] = tuple(out["betas"])  # torch checks for a tuple
    return out


def is_full_batch(optimizer: Mapping[str, Any]) -> bool:
    """Whether the optimizer config asks for one step per epoch (``optimizer=gd``)."""
    return bool(optimizer.get("full_batch", False))


def _configured(group: str, partial: Callable[..., Any], **arguments: Any) -> Any:
    """``partial(**arguments)``, the config's own values refused as a :class:`UserError`:
    they are only checked here, once the run's step count is known (a warm-up longer than the
    run), and the message already names the key."""
    try:
        return partial(**arguments)
    except ValueError as err:
        raise UserError(f"{group}: {err}") from err
