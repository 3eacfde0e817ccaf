"""Resuming continues the same run: its folder, its histories, its best score and early-stopping
state, and -- from an epoch boundary -- bit-identical weights and metrics."""

from __future__ import annotations

import csv
import functools
import http.server
import json
import pathlib
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cnnlab.train import train
from cnnlab.training.callbacks import capture_rng_states, restore_rng_states
from cnnlab.training.loggers import read_rows_before
from cnnlab.training.resume import resolve_checkpoint, resume_argv
from training_helpers import NARROW_RUN as QUICK
from training_helpers import compose_run


# -- the command line of a resumed run ----------------------------------------------------------
def _fake_run(root: Path, *overrides: str) -> Path:
    run = root / "outputs" / "train" / "runs" / "2026-01-01_00-00-00"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    return run


@pytest.mark.parametrize("form", ["last.ckpt", "run folder"])
def test_resume_argv_continues_the_run_with_its_own_overrides(tmp_path: Path, form: str) -> None:
    run = _fake_run(tmp_path, "model.impl=builtin", "trainer.max_epochs=2", "ckpt_path=old.ckpt")
    given = run / "checkpoints" / "last.ckpt" if form == "last.ckpt" else run
    argv = resume_argv(["trainer.max_epochs=4", f"ckpt_path={given}"])
    assert argv == [
        "model.impl=builtin",  # from the run: no need to retype it
        "trainer.max_epochs=4",  # the new value wins over the run's
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={run}",  # the same folder
    ]


def test_resume_argv_starts_a_new_run_for_anything_but_a_runs_last_checkpoint(
    tmp_path: Path,
) -> None:
    run = _fake_run(tmp_path, "model.impl=builtin")
    best = f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"
    last = f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"
    for argv in (
        [best],  # a fork from the best epoch
        [last, "hydra.run.dir=elsewhere"],  # an explicit new folder
        ["-m", last, "seed=1,2"],  # a sweep
        ["ckpt_path=https://example.org/last.ckpt"],
        ["trainer.max_epochs=3"],
    ):
        assert resume_argv(argv) == argv


def test_resolve_checkpoint_takes_a_run_folder_and_names_a_folder_without_one(
    tmp_path: Path,
) -> None:
    run = _fake_run(tmp_path)
    assert resolve_checkpoint(str(run)) == str(run / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"ckpt_path=.*checkpoints/last.ckpt"):
        resolve_checkpoint(str(tmp_path))


# -- pieces of an exact resume ----------------------------------------------------------------
def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.save({"rng": capture_rng_states()}, tmp_path / "rng.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_csv_history_keeps_rows_before_the_checkpoint_and_drops_torn_ones(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val/acc\n0,3,0.5\n,4,\n1,7,0.6\n1,8,0.7\n2,9,0.1,9,9\n2,1")
    header, rows = read_rows_before(path, step=8)
    assert header == ["epoch", "step", "val/acc"]
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "3"), ("", "4"), ("1", "7")]


# -- in-process runs ------------------------------------------------------------------------------
def _train(out: Path, *overrides: str):
    return train(compose_run(out, *overrides))


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _ckpt(run: Path, name: str) -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def test_last_is_the_last_epoch_and_best_the_best_one(tmp_path: Path) -> None:
    """With lr=0 every epoch scores the same, so best.ckpt stays at epoch 0; last.ckpt must
    still move on every epoch (Lightning's save_last wrote it only with a new best)."""
    metrics, _, _ = _train(tmp_path / "run", *QUICK, "optimizer.lr=0", "trainer.max_epochs=3")
    last, best = _ckpt(tmp_path / "run", "last.ckpt"), _ckpt(tmp_path / "run", "best.ckpt")
    assert (last["epoch"], best["epoch"]) == (2, 0)
    assert last["global_step"] == 3 * 6
    assert metrics["val/acc_best"] == pytest.approx(float(_best_score(best)))


def _best_score(checkpoint: dict) -> torch.Tensor:
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "'monitor': 'val/acc'" in k]
    return state["best_model_score"]


def _identical(a, b) -> bool:
    """Nested checkpoint data equal to the last bit (tensors with ``torch.equal``)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_a_continuation_that_fails_before_training_keeps_the_runs_results(tmp_path: Path) -> None:
    """``trainer.max_epochs`` below the checkpoint's epoch is refused before anything is written,
    and the finished run's ``metrics.json`` keeps its scores, with the failure added."""
    from cnnlab.train import run
    from cnnlab.training.validate import ConfigError

    out = tmp_path / "run"
    run(compose_run(out, *QUICK, "trainer.max_epochs=3"))
    finished = json.loads((out / "metrics.json").read_text())
    assert finished["status"] == "ok" and finished["test/acc"] is not None

    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(ConfigError, match=r"saved in epoch 2 .* set trainer.max_epochs above 2"):
        run(compose_run(out, *QUICK, "trainer.max_epochs=1", f"ckpt_path={last}"))
    kept = json.loads((out / "metrics.json").read_text())
    assert kept.pop("continue_error").startswith(f"ckpt_path={last} was saved in epoch 2")
    assert kept == finished


@pytest.mark.slow
def test_resume_2_plus_2_epochs_is_bit_identical_to_4(tmp_path: Path) -> None:
    """Dropout, a per-epoch LR schedule, early stopping and both loggers: every piece of state
    that a resume could lose changes the result if it is lost."""
    setup = (
        *QUICK,
        "model.dropout=0.25",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=0.7",
        "callbacks=early_stopping",
        "logger=[csv,tensorboard]",
    )
    full, half = tmp_path / "full", tmp_path / "half"
    straight, straight_module, _ = _train(full, *setup, "trainer.max_epochs=4")
    _train(half, *setup, "trainer.max_epochs=2", "test=false")
    last = half / "checkpoints" / "last.ckpt"
    resumed, resumed_module, _ = _train(half, *setup, "trainer.max_epochs=4", f"ckpt_path={last}")

    a, b = _ckpt(full, "last.ckpt"), _ckpt(half, "last.ckpt")
    max_diff = max((a["state_dict"][k] - b["state_dict"][k]).abs().max() for k in a["state_dict"])
    assert max_diff == 0, f"weights differ by up to {max_diff}"
    assert _identical(a["optimizer_states"], b["optimizer_states"])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    assert resumed == straight  # val and test metrics, to the last bit
    assert _ckpt(full, "best.ckpt")["epoch"] == _ckpt(half, "best.ckpt")["epoch"]
    assert _rows(half) == _rows(full)  # one continuous CSV history
    assert _tensorboard_scalars(half) == _tensorboard_scalars(full)

    def early_stopping(module):
        (callback,) = [c for c in module.trainer.callbacks if type(c).__name__ == "EarlyStopping"]
        return callback.wait_count, float(callback.best_score)

    assert early_stopping(resumed_module) == early_stopping(straight_module)


@pytest.mark.slow
def test_resume_from_a_url_loads_weights_only(tmp_path: Path, monkeypatch) -> None:
    """An http(s) ckpt_path resumes, but a checkpoint that would run code on unpickling is
    refused instead of executed (Lightning would load URLs with weights_only=False)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    served = tmp_path / "served"
    _train(served / "run", *QUICK, "trainer.max_epochs=1", "test=false")
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    evil = torch.load(served / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    evil["payload"] = Payload()
    torch.save(evil, served / "evil.ckpt")

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        _, module, _ = _train(
            tmp_path / "from_url",
            *QUICK,
            "trainer.max_epochs=2",
            "test=false",
            f"ckpt_path={url}/run/checkpoints/last.ckpt",
        )
        assert module.trainer.current_epoch == 2 and module.trainer.global_step == 2 * 6
        with pytest.raises(Exception, match=r"[Ww]eights only load failed|weights_only=True"):
            _train(tmp_path / "evil", *QUICK, "trainer.max_epochs=2", f"ckpt_path={url}/evil.ckpt")
        assert not marker.exists()
    finally:
        server.shutdown()
