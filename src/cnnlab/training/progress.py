"""Rich progress bar and model summary in a terminal, plain text where the output is a log.

Lightning picks Rich whenever ``rich`` is installed, and a Rich live display written into a CI
log or a sweep's log file is a wall of escape codes. ``conf/callbacks/default.yaml`` therefore
names the classes through the ``${cnnlab.if_tty:in_terminal,otherwise}`` resolver, decided by
``sys.stdout.isatty()`` when the config is resolved; the stored config then names the class
that was actually used, so checkpoints stay plain data.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

IF_TTY = "cnnlab.if_tty"


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def if_tty(in_terminal: Any, otherwise: Any) -> Any:
    """``in_terminal`` when stdout is a terminal, else ``otherwise`` (the resolver)."""
    return in_terminal if stdout_is_terminal() else otherwise


def register_resolvers() -> None:
    if not OmegaConf.has_resolver(IF_TTY):
        OmegaConf.register_new_resolver(IF_TTY, if_tty)


def honour_trainer_switches(callbacks: list[Any], trainer: DictConfig | None) -> list[Any]:
    """Drop the progress bar / model summary callbacks that the trainer config switched off.

    ``trainer.enable_progress_bar=false`` with a progress bar in the callbacks is an error in
    Lightning, and ``enable_model_summary=false`` would not silence a summary callback; here
    the switch wins, as it would without the callbacks.
    """
    from lightning.pytorch.callbacks import ModelSummary
    from lightning.pytorch.callbacks.progress import ProgressBar

    trainer = trainer or {}
    off: tuple[type, ...] = ()
    if not trainer.get("enable_progress_bar", True):
        off += (ProgressBar,)
    if not trainer.get("enable_model_summary", True):
        off += (ModelSummary,)
    return [c for c in callbacks if not isinstance(c, off)] if off else callbacks
