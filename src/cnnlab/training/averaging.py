"""Exponential moving average of the weights: Lightning's ``EMAWeightAveraging``, tested as saved.

Lightning's callback validates and checkpoints the averaged weights (``state_dict``) and keeps
the raw ones in ``checkpoint["current_model_state"]`` so that fitting can resume. But it also
puts the raw weights back whenever *any* stage loads a checkpoint, so ``trainer.test(ckpt_path=
best)`` after ``fit`` would test the raw weights of the epoch whose averaged weights won
``val/acc``. Here only a resumed fit restores the raw weights; testing or validating a
checkpoint uses the weights it holds, as ``cnnlab-eval`` and ``load_run`` do.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging as _EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMAWeightAveraging(_EMAWeightAveraging):
    """``lightning.pytorch.callbacks.EMAWeightAveraging`` whose checkpoints test as saved."""

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
