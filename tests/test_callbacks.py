"""The guards of a run: a NaN loss stops it without a host-device sync per step, Ctrl-C stops
it at a batch boundary, and every file it writes is replaced atomically."""

from __future__ import annotations

import os
import resource
import signal
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cnnlab.training.atomic import WriteError, atomic_write_text, save_torch
from cnnlab.training.callbacks import NonFiniteLossError, SaveOnInterrupt, StopOnNonFiniteLoss


def _trainer(log_every_n_steps: int = 5) -> SimpleNamespace:
    trainer = SimpleNamespace(
        log_every_n_steps=log_every_n_steps,
        current_epoch=0,
        global_step=0,
        interrupted=False,
        checkpoint_callback=None,
        reductions=0,
    )

    def reduce_boolean_decision(decision: bool, all: bool = True) -> bool:
        trainer.reductions += 1
        return decision

    trainer.strategy = SimpleNamespace(reduce_boolean_decision=reduce_boolean_decision)
    return trainer


@contextmanager
def _counting_host_reads():
    """Count ``bool(tensor)``/``float(tensor)``: each one waits for the device."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("__bool__", "__float__", "item")}

    def counted(name):
        def read(self, *args):
            counts["n"] += 1
            return originals[name](self, *args)

        return read

    for name in originals:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _step(guard: StopOnNonFiniteLoss, trainer: SimpleNamespace, loss: float) -> None:
    guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, 0)
    trainer.global_step += 1


def test_finite_losses_are_read_once_per_logging_interval() -> None:
    guard, trainer = StopOnNonFiniteLoss(), _trainer(log_every_n_steps=5)
    with _counting_host_reads() as reads:
        for _ in range(4):
            _step(guard, trainer, 0.5)
        assert reads["n"] == 0 and trainer.reductions == 0  # no sync inside the interval
        _step(guard, trainer, 0.5)
        assert reads["n"] == 1 and trainer.reductions == 1
        guard.on_save_checkpoint(trainer, None, {})  # nothing new since: no second sync
        assert reads["n"] == 1


def test_a_nan_loss_is_reported_with_its_step_before_any_checkpoint() -> None:
    guard, trainer = StopOnNonFiniteLoss(), _trainer(log_every_n_steps=50)
    for loss in (0.5, 0.4, float("nan"), 0.3):
        _step(guard, trainer, loss)
    with pytest.raises(NonFiniteLossError) as err:
        guard.on_save_checkpoint(trainer, None, {})  # a checkpoint of diverged weights
    message = str(err.value)
    assert message.startswith("train loss became nan at epoch 0, step 2; training stopped")
    assert "no checkpoint was written yet" in message and "Lower optimizer.lr" in message


def test_the_nan_check_runs_at_epoch_end_and_before_validation() -> None:
    for hook in ("on_train_epoch_end", "on_validation_start"):
        guard, trainer = StopOnNonFiniteLoss(), _trainer(log_every_n_steps=50)
        trainer.sanity_checking = False
        _step(guard, trainer, float("inf"))
        with pytest.raises(NonFiniteLossError, match="became inf"):
            getattr(guard, hook)(trainer, None)


def test_ctrl_c_while_fitting_waits_for_the_batch_boundary(tmp_path: Path) -> None:
    callback, trainer = SaveOnInterrupt(str(tmp_path)), SimpleNamespace()
    before = signal.getsignal(signal.SIGINT)
    callback.on_fit_start(trainer, None)
    try:
        os.kill(os.getpid(), signal.SIGINT)  # would raise KeyboardInterrupt anywhere
        callback.on_validation_batch_end(trainer)  # no Ctrl-C lost, none raised twice:
        pytest.fail("the deferred Ctrl-C was not raised at the batch boundary")
    except KeyboardInterrupt:
        pass
    finally:
        callback.teardown(trainer, None, "fit")
    assert signal.getsignal(signal.SIGINT) is before
    callback.on_train_batch_end(trainer)  # already raised once: nothing pending


# -- atomic writes ------------------------------------------------------------------------------
@contextmanager
def _files_limited_to(size: int):
    """Writes past ``size`` bytes fail with EFBIG, as they would on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_failed_write_keeps_the_previous_file_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_text(path, '{"status": "ok"}\n')
    with _files_limited_to(1000), pytest.raises(WriteError, match=rf"could not write {path}"):
        atomic_write_text(path, "x" * 5000)
    assert path.read_text() == '{"status": "ok"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left


def test_a_checkpoint_that_does_not_fit_leaves_the_last_one_loadable(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    save_torch(path, {"epoch": 1, "w": torch.ones(10)})
    with _files_limited_to(50_000), pytest.raises(WriteError, match="File too large"):
        save_torch(path, {"epoch": 2, "w": torch.ones(100_000)})
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_flushes_the_loggers_first(tmp_path: Path) -> None:
    """Rows the CSV logger still buffers reach metrics.csv when a checkpoint is taken, so a run
    killed right after it has the history its checkpoint reflects."""
    from cnnlab.training.callbacks import ExactResume
    from cnnlab.training.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    logger.log_metrics({"val/acc": 0.5, "epoch": 0}, step=10)  # buffered: flush every 100 steps
    metrics = Path(logger.log_dir) / "metrics.csv"
    assert not metrics.exists()
    ExactResume().on_save_checkpoint(SimpleNamespace(loggers=[logger]), None, {})
    assert "0.5" in metrics.read_text()
