"""``cnnlab-train ckpt_path=<run>/checkpoints/last.ckpt`` (or ``ckpt_path=<run>``) continues
that run in place.

The command line is rewritten before Hydra composes it: the run's own overrides (from
``<run>/.hydra/overrides.yaml``) come first, the new ones after them and winning, and
``hydra.run.dir`` is the run folder. So the resumed run has the original model, data and
optimizer without retyping them, writes into the same folder (checkpoints, ``train.log``,
``metrics.json``, the CSV and TensorBoard histories) and its checkpoint callbacks see their own
``dirpath``, which is what makes Lightning keep the best score and the early-stopping state.

Any other checkpoint (``best.ckpt``, a copied file, a URL) or an explicit ``hydra.run.dir=``
starts a new run folder from that checkpoint; its ``metrics.json`` names where it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

LAST = "last.ckpt"
_MULTIRUN_FLAGS = ("-m", "--multirun")


def is_url(path: str) -> bool:
    return "://" in path


def resolve_checkpoint(ckpt_path: str) -> str:
    """The checkpoint file to resume from: a ``.ckpt``/URL as given, or a run folder's
    ``checkpoints/last.ckpt``."""
    if is_url(ckpt_path):
        return ckpt_path
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        for candidate in (path / "checkpoints" / LAST, path / LAST):
            if candidate.is_file():
                return str(candidate)
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path} is a folder without checkpoints/{LAST}: pass a run folder "
            "written by cnnlab-train or a .ckpt file."
        )
    return str(path)


def run_folder_of(checkpoint: str) -> Path | None:
    """The folder that ``checkpoint`` is the ``checkpoints/last.ckpt`` of, else None."""
    if is_url(checkpoint):
        return None
    path = Path(checkpoint).expanduser().resolve()
    if path.name == LAST and path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def override_key(override: str) -> str:
    """The key a command-line override sets: ``+a.b=1``, ``~a.b`` and ``a.b=1`` all give ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


def _quoted(value: str) -> str:
    """``value`` as a Hydra override value: as is when plain, else single-quoted."""
    if all(c.isalnum() or c in "_/-.:+@%" for c in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` (without the program name), rewritten to continue the run that its
    ``ckpt_path=`` is the ``last.ckpt`` of; unchanged when there is nothing to continue."""
    argv = list(argv)
    overrides = [a for a in argv if not a.startswith("-")]
    ckpt = next(
        (a.split("=", 1)[1] for a in reversed(overrides) if override_key(a) == "ckpt_path"), ""
    )
    multirun = any(a in _MULTIRUN_FLAGS for a in argv)
    if (
        not ckpt
        or ckpt == "null"
        or multirun
        or any(override_key(a) == "hydra.run.dir" for a in argv)
    ):
        return argv
    try:
        checkpoint = resolve_checkpoint(ckpt)
    except FileNotFoundError:
        return argv  # train() reports it
    run = run_folder_of(checkpoint)
    overrides_file = run / ".hydra" / "overrides.yaml" if run else None
    if overrides_file is None or not overrides_file.is_file():
        return argv
    earlier = [str(o) for o in OmegaConf.load(overrides_file)]
    given = {override_key(o) for o in overrides}
    kept = [
        o
        for o in earlier
        if override_key(o) not in given and not override_key(o).startswith("hydra")
    ]
    new = [o for o in overrides if override_key(o) != "ckpt_path"]
    flags = [a for a in argv if a.startswith("-")]
    return [
        *flags,
        *kept,
        *new,
        f"ckpt_path={_quoted(str(Path(checkpoint).resolve()))}",
        f"hydra.run.dir={_quoted(str(run))}",
    ]


def logging_step(checkpoint: str) -> int | None:
    """The logger step a checkpoint was taken at (what the next logged row will carry)."""
    if is_url(checkpoint):
        return None
    ckpt: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    epoch_loop = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
    step = epoch_loop.get("_batches_that_stepped", ckpt.get("global_step"))
    return None if step is None else int(step)


def continue_logs(loggers: Sequence[Any], checkpoint: str) -> None:
    """Make ``loggers`` that can (cnnlab's CSV/TensorBoard) continue the history in place."""
    step = logging_step(checkpoint)
    if step is None:
        return
    for logger in loggers:
        if hasattr(logger, "continue_from"):
            logger.continue_from(step)
    log.info("Resuming %s at logging step %d", checkpoint, step)
