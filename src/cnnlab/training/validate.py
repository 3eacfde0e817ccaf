"""Check a run's config before any data or model is built, so a typo costs one line, not a trace.

Hydra turns ``trainer.max_epochs=abc`` into the string ``'abc'`` without complaint; Lightning
then fails deep inside its fit loop (or, under ``debug=fdr``, never looks at it). Every key a
user is likely to set is checked here against what it must hold, and the message names the key.
The resume checkpoint (``ckpt_path``) is read once here too: a missing, empty, truncated or
foreign file is refused before the data is loaded, and its stored config must pass
:mod:`cnnlab.training.safe_config`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.layers import IMPLS
from cnnlab.optim import IMPLS as OPTIMIZER_IMPLS
from cnnlab.optim import optimizer_class
from cnnlab.training.compile import compile_options
from cnnlab.training.errors import UserError

_UNSET = object()
PRECISIONS = {"auto", "16", "32", "64", "bf16", "16-mixed", "bf16-mixed", "32-true", "64-true",
              "16-true", "bf16-true", "transformer-engine", "transformer-engine-float16"}  # fmt: skip


class ConfigError(UserError):
    """A config value that cannot work; the message names the key and what it must hold."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int, optional: bool = False) -> Callable[[Any], bool]:
    return lambda v: (optional and v is None) or (_is_int(v) and v >= low)


def number(low: float, high: float = math.inf, high_open: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return _is_number(v) and low <= v and (v < high if high_open else v <= high)

    return check


def batches(v: Any) -> bool:
    """Lightning's limit_*_batches / overfit_batches: a count, or a fraction of the epoch."""
    return v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def image_size(v: Any) -> bool:
    if isinstance(v, (list, tuple, ListConfig)):
        return len(v) == 2 and all(_is_int(x) and x >= 1 for x in v)
    return v is None or (_is_int(v) and v >= 1)


def devices(v: Any) -> bool:
    """Lightning's ``devices``: a count, -1 (all), ``auto``, or which ones (``[0, 1]``, ``"0,1"``)."""
    if isinstance(v, (list, tuple, ListConfig)):
        return len(v) > 0 and all(_is_int(x) and x >= 0 for x in v)
    if isinstance(v, str):
        return v == "auto" or all(part.strip().isdigit() for part in v.split(","))
    return _is_int(v) and (v >= 1 or v == -1)


@dataclass(frozen=True)
class Rule:
    key: str
    accepts: Callable[[Any], bool]
    expected: str


RULES: tuple[Rule, ...] = (
    Rule("seed", integer(0, optional=True), "an integer >= 0"),
    Rule("trainer.max_epochs", integer(-1, optional=True), "an integer >= 1 (or -1: no limit)"),
    Rule("trainer.min_epochs", integer(0, optional=True), "an integer >= 0"),
    Rule("trainer.max_steps", integer(-1, optional=True), "an integer >= 1 (or -1: no limit)"),
    Rule("trainer.limit_train_batches", batches, "null, a batch count, or a fraction in [0, 1]"),
    Rule("trainer.limit_val_batches", batches, "null, a batch count, or a fraction in [0, 1]"),
    Rule("trainer.limit_test_batches", batches, "null, a batch count, or a fraction in [0, 1]"),
    Rule("trainer.overfit_batches", batches, "a batch count or a fraction in [0, 1]"),
    Rule("trainer.check_val_every_n_epoch", integer(1, optional=True), "an integer >= 1"),
    Rule("trainer.log_every_n_steps", integer(1, optional=True), "an integer >= 1"),
    Rule("trainer.accumulate_grad_batches", integer(1), "an integer >= 1"),
    Rule("trainer.fast_dev_run", lambda v: isinstance(v, bool) or integer(0)(v), "true, false or a batch count"),
    Rule("trainer.gradient_clip_val", lambda v: v is None or number(0)(v), "null or a number >= 0"),
    Rule("trainer.precision", lambda v: str(v) in PRECISIONS and not isinstance(v, bool), f"one of {sorted(PRECISIONS)}"),
    Rule("trainer.devices", devices, "a count >= 1, -1 (all), auto, or a list such as [0,1]"),
    Rule("data.batch_size", integer(1), "an integer >= 1"),
    Rule("data.val_fraction", number(0, 1, high_open=True), "a fraction in [0, 1)"),
    Rule("data.test_fraction", number(0, 1, high_open=True), "a fraction in [0, 1)"),
    Rule("data.num_workers", integer(0, optional=True), "null (auto) or an integer >= 0"),
    Rule("data.limit_train_samples", integer(1, optional=True), "null or an integer >= 1"),
    Rule("data.image_size", image_size, "null, a size >= 1, or [height, width]"),
    Rule("data.channels", lambda v: v in (None, 1, 3) and not isinstance(v, bool), "null (from the images), 1 or 3"),
    Rule("model.impl", lambda v: v in IMPLS, "custom (hand-written layers) or builtin (torch.nn)"),
    Rule("model.dropout", number(0, 1, high_open=True), "a probability in [0, 1)"),
    Rule("optimizer.impl", lambda v: v in OPTIMIZER_IMPLS, "custom (cnnlab.optim, the update written out) or builtin (torch.optim)"),
    Rule("optimizer.lr", number(0), "a learning rate >= 0, e.g. optimizer.lr=1e-3"),
    Rule("optimizer.weight_decay", number(0), "a number >= 0"),
    Rule("optimizer.momentum", number(0), "a number >= 0"),
    Rule("loss.label_smoothing", number(0, 1), "a number in [0, 1]"),
    Rule("data.mixup.alpha", number(0), "a number >= 0 (0 = off), e.g. 0.2"),
    Rule("data.mixup.prob", number(0, 1), "a probability in [0, 1]"),
    Rule("data.mixup.switch_prob", number(0, 1), "a probability in [0, 1]"),
    Rule("data.cutmix.alpha", number(0), "a number >= 0 (0 = off), e.g. 1.0"),
    Rule("data.augment.random_erasing.p", number(0, 1), "a probability in [0, 1]"),
    Rule("channels_last", lambda v: isinstance(v, bool), "true or false"),
    Rule("l1", number(0), "a penalty >= 0"),
    Rule("l2", number(0), "a penalty >= 0"),
)  # fmt: skip

#: hints for mandatory values (``???``) a user has to give on the command line
MISSING_HINTS = {
    "data.root": "data.root=<folder with train/ and test/, or a .tar.gz of one>",
    "ckpt_path": "ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt",
}


def _value(cfg: DictConfig, key: str) -> Any:
    node = OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=False)
    return (
        node if node is _UNSET else OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
    )


def check_missing(cfg: DictConfig) -> None:
    """Every ``???`` value is named, with how to set it, before Hydra's own error."""
    for key in sorted(OmegaConf.missing_keys(cfg)):
        if key.startswith("hydra"):
            continue
        hint = MISSING_HINTS.get(key, f"{key}=<value>")
        raise ConfigError(f"{key} is not set: give it on the command line, e.g. {hint}.")


def check_values(cfg: DictConfig) -> None:
    for rule in RULES:
        value = _value(cfg, rule.key)
        if value is _UNSET:
            continue
        if not rule.accepts(value):
            raise ConfigError(f"{rule.key}={value!r} is not valid: expected {rule.expected}.")


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU trainer on a machine without one; Lightning's own error names no way out.

    Apart from :func:`validate_config`, which says whether a config can work anywhere: this
    one is about the machine, and the commands that build a trainer call it.
    """
    import torch

    if _value(cfg, "trainer.accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "trainer.accelerator=gpu but PyTorch sees no CUDA GPU here: use trainer=cpu "
            "(trainer=ddp_cpu for DDP on CPU processes), or trainer.accelerator=auto."
        )


def check_mixing_loss(cfg: DictConfig) -> None:
    """MixUp/CutMix make class-probability targets, which NLL (class indices only) cannot take."""
    alphas = [_value(cfg, key) for key in ("data.mixup.alpha", "data.cutmix.alpha")]
    mixing = any(_is_number(alpha) and alpha > 0 for alpha in alphas)
    target = str(_value(cfg, "loss._target_"))
    if mixing and target.endswith("LogSoftmaxNLL"):
        raise ConfigError(
            "loss=nll takes class indices, but data.mixup/data.cutmix make soft targets: use "
            "loss=cross_entropy or loss=mse, or set data.mixup.alpha=0 data.cutmix.alpha=0."
        )


def check_optimizer(cfg: DictConfig) -> None:
    """``optimizer.impl=custom`` needs a hand-written twin of the configured optimizer."""
    optimizer = cfg.get("optimizer")
    if optimizer is None or "_target_" not in optimizer:
        return
    try:
        optimizer_class(OmegaConf.to_container(optimizer, resolve=True))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_metric_names(cfg: DictConfig) -> None:
    """A callback's ``monitor`` and ``optimized_metric`` name metrics the run will have.

    Lightning finds a wrong ``monitor`` only at the end of the first epoch, and a wrong
    ``optimized_metric`` is found when the run is over; both are typos worth one line up front.
    """
    from cnnlab.training.module import FIT_METRICS, OTHER_FIT_METRICS, TEST_METRICS

    callbacks = _value(cfg, "callbacks")
    for name, callback in callbacks.items() if isinstance(callbacks, dict) else ():
        monitor = callback.get("monitor") if isinstance(callback, dict) else None
        if monitor is None or str(monitor).startswith(OTHER_FIT_METRICS):
            continue
        if monitor not in FIT_METRICS:
            raise ConfigError(
                f"callbacks.{name}.monitor={monitor!r} is not a metric logged while training: "
                f"use one of {', '.join(FIT_METRICS)}."
            )
    metric = _value(cfg, "optimized_metric")
    results = [m for m in FIT_METRICS if m.startswith("val/")]
    results += list(TEST_METRICS) if _value(cfg, "test") is not False else []
    if metric not in (_UNSET, None) and metric not in results:
        raise ConfigError(
            f"optimized_metric={metric!r} is not a result of this run: use one of "
            f"{', '.join(results)}."
        )


def check_resume(cfg: DictConfig) -> None:
    """``ckpt_path`` must be a readable checkpoint whose stored config is allowed."""
    path = cfg.get("ckpt_path")
    if path in (None, ""):
        return
    from cnnlab.training.builders import read_checkpoint
    from cnnlab.training.safe_config import check_config

    checkpoint = read_checkpoint(str(path))
    stored = checkpoint.get("cnnlab_config")
    if stored is not None:
        check_config(stored, str(path))
    epoch, max_epochs = checkpoint.get("epoch"), _value(cfg, "trainer.max_epochs")
    if isinstance(epoch, int) and _is_number(max_epochs) and -1 < max_epochs < epoch:
        # Lightning's own error names neither the key nor the fix
        raise ConfigError(
            f"ckpt_path={path} was saved in epoch {epoch} (counting from 0) but "
            f"trainer.max_epochs={max_epochs}: set trainer.max_epochs above {epoch} to train on, "
            f"e.g. trainer.max_epochs={epoch + 10}."
        )


def validate_config(cfg: DictConfig, resume: bool = True) -> None:
    """Raise :class:`ConfigError` (or a checkpoint error) for the first value that cannot work.

    ``resume``: ``cfg.ckpt_path`` is a checkpoint training resumes from (cnnlab-train); eval
    reads its checkpoint itself and passes False.
    """
    check_missing(cfg)
    check_values(cfg)
    check_mixing_loss(cfg)
    check_optimizer(cfg)
    check_metric_names(cfg)
    try:
        compile_options(cfg.get("compile"))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if resume:
        check_resume(cfg)
