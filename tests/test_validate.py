"""The config is checked before any data or model exists, and every message names its key."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from cnnlab.paths import CONF_DIR
from cnnlab.training.errors import user_errors_as_messages, user_message
from cnnlab.training.validate import ConfigError, validate_config


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [
        f"{group}={option}"
        for group in ("data", "model", "optimizer", "scheduler", "loss", "trainer", "debug")
        for option in _options(group)
    ]
    + ["experiment=seed_cifar10", "trainer.limit_train_batches=0.5", "data.image_size=[8,6]"]
    + ["trainer.devices=[0,1]", "trainer.devices=-1", "trainer.devices=auto"]
    + ["optimized_metric=test/f1", "callbacks.model_checkpoint.monitor=val/loss"]
    + [f"callbacks={option}" for option in _options("callbacks")],
)
def test_every_shipped_config_is_valid(compose_config, override: str) -> None:
    folder = ("data=imagefolder", "data.root=x")
    extra = folder if override.startswith(("data=imagefolder", "data.image_size")) else ()
    validate_config(compose_config(*extra, override))  # raises if refused


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer.max_epochs=abc"], "trainer.max_epochs='abc' is not valid: expected an integer"),
        (["trainer.max_epochs=abc", "debug=fdr"], "trainer.max_epochs='abc'"),
        (["trainer.max_epochs=2.5"], "trainer.max_epochs=2.5"),
        (["data.batch_size=abc"], "data.batch_size='abc' is not valid: expected an integer >= 1"),
        (["data.batch_size=0"], "data.batch_size=0"),
        (["optimizer.lr=-1"], "optimizer.lr=-1 is not valid: expected a learning rate >= 0"),
        (["optimizer.lr=nan"], "optimizer.lr=nan"),
        (["model.impl=cuda"], "model.impl='cuda' is not valid: expected custom"),
        (["loss.label_smoothing=2"], "loss.label_smoothing=2 is not valid: expected a number in"),
        (["data.val_fraction=1.0"], "data.val_fraction=1.0"),
        (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5"),
        (["trainer.precision=fp8"], "trainer.precision='fp8'"),
        (["l2=-0.1"], "l2=-0.1"),
        (["seed=abc"], "seed='abc'"),
        (["trainer.devices=abc"], "trainer.devices='abc'"),
        (["trainer.devices=0"], "trainer.devices=0"),
        (
            ["data=imagefolder"],
            "data.root is not set: give it on the command line, e.g. data.root=",
        ),
        (["data=imagefolder", "data.root=x", "data.channels=2"], "data.channels=2"),
        (
            ["callbacks=early_stopping", "callbacks.early_stopping.monitor=val/accuracy"],
            "callbacks.early_stopping.monitor='val/accuracy' is not a metric logged while "
            "training: use one of train/loss, train/acc",
        ),
        (["callbacks.model_checkpoint.monitor=acc"], "callbacks.model_checkpoint.monitor='acc'"),
        (["optimized_metric=val/f1"], "optimized_metric='val/f1' is not a result of this run"),
        (["optimized_metric=test/acc", "test=false"], "optimized_metric='test/acc'"),
    ],
)
def test_bad_values_are_named(compose_config, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(compose_config(*overrides))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"", "is empty (0 bytes)"),
        (b"\x93NUMPY random bytes" * 50, "truncated or not a PyTorch checkpoint"),
        ("dir", "is a folder"),
    ],
)
def test_resume_checkpoint_is_read_first(compose_config, tmp_path, content, message) -> None:
    ckpt = tmp_path / "last.ckpt"
    if content == "dir":
        ckpt.mkdir()
    elif content is not None:
        ckpt.write_bytes(content)
    with pytest.raises(Exception, match=re.escape(message)) as caught:
        validate_config(compose_config(f"ckpt_path={ckpt}"))
    assert user_message(caught.value) is not None  # a user error: one line, no traceback


def test_user_errors_end_in_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as caught, user_errors_as_messages():
        raise ConfigError("data.batch_size='abc' is not valid:\n expected an integer >= 1.")
    assert caught.value.code == 1
    assert capsys.readouterr().err == (
        "Error: data.batch_size='abc' is not valid: expected an integer >= 1.\n"
    )


def test_verbose_keeps_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError), user_errors_as_messages():
        raise ConfigError("x")


def test_bugs_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError), user_errors_as_messages():
        _ = 1 / 0


def test_a_full_disk_names_the_path(capsys, monkeypatch) -> None:
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit), user_errors_as_messages():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.json")
    err = capsys.readouterr().err
    assert err.startswith("Error: No space left on device while writing /runs/x/metrics.json")
    assert err.count("\n") == 1
