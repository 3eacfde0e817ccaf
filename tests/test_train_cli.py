"""cnnlab-train: every config group composes, every optimizer trains, and the CLI keeps its
promises about run folders, resuming, determinism, divergence, precision and bad input."""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from cnnlab.optim import optimizer_class
from cnnlab.paths import CONF_DIR
from cnnlab.training.builders import (
    build_datamodule,
    build_model,
    build_module,
    resolve_precision,
)
from cnnlab.training.module import _without

#: a narrow seed_cnn: in-process tests check the training spine, not the network's capacity
SMALL = ("model.channels=[8,16,16]", "model.hidden=32")
#: a couple of short epochs, so CLI tests exercise epoch ends, checkpoints and test in seconds
QUICK = (
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "viz.enabled=false",
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (g, o)
        for g in ("trainer", "callbacks", "logger", "debug", "experiment")
        for o in _options(g)
    ],
)
def test_every_config_group_composes(compose_config, group: str, option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.paths.output_dir and cfg.choices.model


@pytest.mark.parametrize("option", _options("optimizer"))
@pytest.mark.parametrize("impl", ["builtin", "custom"])
def test_optimizers_build(compose_config, option: str, impl: str) -> None:
    cfg = compose_config(f"optimizer={option}", f"optimizer.impl={impl}")
    params = [torch.nn.Parameter(torch.zeros(2))]
    config = _without(dict(cfg.optimizer), ("full_batch", "impl"))
    config["_target_"] = optimizer_class(cfg.optimizer)
    optimizer = instantiate(config)(params)
    assert optimizer.defaults["lr"] == cfg.optimizer.lr
    assert type(optimizer).__module__.startswith(
        "cnnlab.optim" if impl == "custom" else "torch.optim"
    )


@pytest.mark.parametrize("option", _options("loss"))
@pytest.mark.parametrize("impl", ["builtin", "custom"])
def test_losses_build_for_both_impls(compose_config, option: str, impl: str) -> None:
    loss = instantiate(compose_config(f"loss={option}", f"model.impl={impl}").loss)
    assert isinstance(loss, torch.nn.Module)


def test_experiment_then_data_override_on_the_command_line(compose_config) -> None:
    cfg = compose_config("experiment=seed_cifar10", "data=imagefolder", "data.root=c.tar.gz")
    assert cfg.data._target_ == "cnnlab.data.ImageFolderDataModule"
    assert cfg.data.normalize is False and cfg.data.batch_size == 64
    assert cfg.optimizer.lr == 1e-3 and cfg.trainer.max_epochs == 10


def test_unknown_key_is_named_by_hydra(compose_config) -> None:
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose_config("trainer.max_epoch=3")


def test_bad_impl_is_explained(compose_config) -> None:
    cfg = compose_config("model.impl=cuda")
    with pytest.raises(ValueError, match=r"model.impl='cuda'.*custom.*builtin"):
        build_model(cfg, build_datamodule(cfg))


def test_auto_precision_is_32_on_cpu() -> None:
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"


# One fast_dev_run per optimizer; schedulers and losses are spread over them.
COMBOS = [
    ("gd", "none", "cross_entropy"),
    ("sgd", "step", "mse"),
    ("momentum", "cosine", "nll"),
    ("nesterov", "onecycle", "cross_entropy"),
    ("rmsprop", "warmup_cosine", "mse"),
    ("adam", "step", "nll"),
    ("adamw", "onecycle", "cross_entropy"),
]


@pytest.mark.parametrize(("optimizer", "scheduler", "loss"), COMBOS)
def test_fast_dev_run(compose_config, optimizer: str, scheduler: str, loss: str) -> None:
    from cnnlab.train import train

    cfg = compose_config(
        f"optimizer={optimizer}",
        f"scheduler={scheduler}",
        f"loss={loss}",
        "model.impl=builtin",
        *SMALL,
        "debug=fdr",
        "l1=1e-5",
        "l2=1e-4",
    )
    L.seed_everything(cfg.seed, workers=True)
    initial = build_module(cfg, build_datamodule(cfg)).state_dict()
    metrics, module, datamodule = train(cfg)
    assert math.isfinite(metrics["test/loss"]) and "test/acc" in metrics
    trained = module.state_dict()
    weights = [k for k in initial if k.endswith("weight")]
    assert weights and all(not torch.equal(initial[k], trained[k]) for k in weights), (
        "one optimizer step must move every weight"
    )
    trainer = module.trainer
    if optimizer == "gd":  # full batch: accumulate over every train batch, one step per epoch
        assert trainer.accumulate_grad_batches == len(datamodule.train_dataloader()) > 1
    if scheduler != "none":
        (config,) = trainer.lr_scheduler_configs
        per_step = scheduler in ("onecycle", "warmup_cosine")
        assert config.interval == ("step" if per_step else "epoch")


# -- the real CLI, in subprocesses ------------------------------------------------------------
def _single_run(root: Path) -> Path:
    (run_dir,) = (root / "outputs" / "train" / "runs").iterdir()
    return run_dir


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _csv_epochs(run_dir: Path, key: str) -> list[int]:
    """The epoch of every row that logged ``key``, in file order (repeats kept)."""
    return [int(row["epoch"]) for row in _csv_rows(run_dir) if row.get(key)]


#: cross-entropy of a uniform guess over the 10 digit classes
LOG_10 = math.log(10)


@pytest.mark.slow
def test_cli_writes_the_run_folder_contract(run_cli, tmp_path: Path) -> None:
    quick_with_plots = [o for o in QUICK if not o.startswith("viz.")]
    result = run_cli("cnnlab.train", *quick_with_plots)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = _single_run(tmp_path)
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "train.log", "csv/metrics.csv"):
        assert (run_dir / name).is_file(), name
    for name in ("best.ckpt", "last.ckpt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert ckpt["cnnlab_config"]["paths"]["output_dir"] == str(run_dir)
    record = _metrics(run_dir)
    assert record["status"] == "ok" and record["error"] is None
    assert record["overrides"] == quick_with_plots
    assert (record["impl"], record["model"], record["data"]) == ("custom", "seed_cnn", "digits")
    assert 0 < record["test/loss"] < LOG_10, "two short epochs must beat a uniform guess"
    assert record["wall_time_s"] > 0
    rows = _csv_rows(run_dir)
    val_acc = [float(r["val/acc"]) for r in rows if r["val/acc"]]
    assert record["val/acc_best"] == pytest.approx(max(val_acc))  # the epoch best.ckpt holds
    (test_row,) = [r for r in rows if r["test/acc"]]
    for key in ("test/acc", "test/f1", "test/precision", "test/recall", "test/loss"):
        assert record[key] == pytest.approx(float(test_row[key])), key
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best", "lr-Adam"} <= set(
        header
    )
    assert f"Run folder: {run_dir}" in result.stdout + result.stderr
    assert "test/acc" in (run_dir / "train.log").read_text()
    assert any((run_dir / "viz").glob("*.png"))  # end-of-training plots (viz.enabled default)


@pytest.mark.slow
def test_resume_continues_the_same_run_folder(run_cli, tmp_path: Path) -> None:
    """``ckpt_path=<run>`` continues that run: same folder, its own overrides, one history,
    the best score of all epochs (no "dirpath has changed" reset)."""
    first = run_cli("cnnlab.train", "model.impl=builtin", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = _single_run(tmp_path)
    resumed = run_cli("cnnlab.train", f"ckpt_path={run_dir}", "trainer.max_epochs=4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "dirpath has changed" not in resumed.stderr
    assert _single_run(tmp_path) == run_dir  # no second run folder
    assert _csv_epochs(run_dir, "val/acc") == [0, 1, 2, 3]
    assert _csv_epochs(run_dir, "test/acc") == [4]  # the first part's test row is superseded
    last, best = (
        torch.load(run_dir / "checkpoints" / name, weights_only=True)
        for name in ("last.ckpt", "best.ckpt")
    )
    assert last["epoch"] == 3 and last["cnnlab_config"]["model"]["impl"] == "builtin"
    val_acc = [float(r["val/acc"]) for r in _csv_rows(run_dir) if r["val/acc"]]
    assert best["epoch"] == max(range(4), key=lambda e: (val_acc[e], -e))  # first best epoch
    record = _metrics(run_dir)
    assert record["status"] == "ok" and record["val/acc_best"] == pytest.approx(max(val_acc))
    assert "model.impl=builtin" in record["overrides"] and record["resumed_from"].endswith(
        "checkpoints/last.ckpt"
    )
    assert (run_dir / "train.log").read_text().count("Test metrics") == 2  # one log, appended


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_equals_an_uninterrupted_run(run_cli, tmp_path) -> None:
    """After ``kill -9`` last.ckpt is the last finished epoch (never a torn file), and resuming
    from it ends bit-identical to a run that was never stopped."""
    slow_epochs = ("model.impl=builtin", *SMALL, "data.batch_size=8", "trainer.max_epochs=5")
    slow_epochs += ("trainer.limit_train_batches=100", "trainer.limit_val_batches=4")
    slow_epochs += ("trainer.limit_test_batches=4", "viz.enabled=false")
    straight = run_cli("cnnlab.train", *slow_epochs, "hydra.run.dir=outputs/straight")
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab.train", *slow_epochs, "hydra.run.dir=outputs/killed"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "outputs" / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():  # the end of epoch 0
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = torch.load(last, weights_only=True)  # loadable: written atomically
    assert killed_at["epoch"] < 4, "the run finished before it could be killed"

    resumed = run_cli("cnnlab.train", f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = (
        torch.load(tmp_path / "outputs" / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("straight", "killed")
    )
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    keys = ("val/acc_best", "test/acc", "test/loss", "confusion_matrix")
    straight_record, resumed_record = (
        _metrics(tmp_path / "outputs" / name) for name in ("straight", "killed")
    )
    assert {k: resumed_record[k] for k in keys} == {k: straight_record[k] for k in keys}
    assert _csv_epochs(tmp_path / "outputs" / "killed", "val/acc") == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_seed_and_deterministic_repeat_exactly(run_cli, tmp_path: Path) -> None:
    records = []
    for name in ("a", "b"):
        args = ("model.impl=builtin", *QUICK, "seed=7", "trainer.deterministic=true")
        result = run_cli("cnnlab.train", *args, f"hydra.run.dir=outputs/{name}")
        assert result.returncode == 0, result.stderr[-3000:]
        records.append(_metrics(tmp_path / "outputs" / name))
    for key in ("val/acc_best", "test/acc", "test/loss", "confusion_matrix"):
        assert records[0][key] == records[1][key], key


@pytest.mark.slow
def test_bf16_mixed_on_cpu(run_cli, tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", "model.impl=builtin", *QUICK, "trainer.precision=bf16-mixed")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _metrics(_single_run(tmp_path))["status"] == "ok"


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_keeps_the_checkpoint(run_cli, tmp_path) -> None:
    result = run_cli(
        "cnnlab.train",
        "model.impl=builtin",
        "optimizer=sgd",
        "optimizer.lr=1e10",
        "trainer.max_epochs=5",
        "trainer.limit_train_batches=1",
        "viz.enabled=false",
    )
    assert result.returncode != 0
    assert "train loss became" in result.stderr and "Lower optimizer.lr" in result.stderr
    run_dir = _single_run(tmp_path)
    record = _metrics(run_dir)
    assert record["status"] == "nan" and "train loss became" in record["error"]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [("trainer.max_epoch=3", "max_epoch"), ("model.impl=cuda", "model.impl='cuda'")],
)
def test_bad_input_fails_with_a_helpful_message(run_cli, override: str, message: str) -> None:
    result = run_cli("cnnlab.train", override, *QUICK)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_last_checkpoint_and_records_interrupted(run_cli, tmp_path: Path) -> None:
    """SIGINT mid-epoch always ends the command with exit 1 (it used to be absorbed at times and
    the run trained on to exit 0), saves the interrupt point as last.ckpt, and resuming from
    it neither repeats nor skips an epoch."""
    command = [sys.executable, "-m", "cnnlab.train", "model.impl=builtin", "viz.enabled=false"]
    proc = subprocess.Popen(
        [*command, "trainer.max_epochs=200", "data.batch_size=8", "hydra.run.dir=outputs/run"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "outputs" / "run"
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr[-3000:]
    assert _metrics(run_dir)["status"] == "interrupted", stderr[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["cnnlab_config"]["trainer"]["max_epochs"] == 200
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert not progress["is_last_batch"], "saved where Ctrl-C stopped it, inside an epoch"
    epoch = ckpt["epoch"]

    resumed = run_cli("cnnlab.train", f"ckpt_path={run_dir}", f"trainer.max_epochs={epoch + 2}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _csv_epochs(run_dir, "val/acc") == list(range(epoch + 2))
    assert _metrics(run_dir)["status"] == "ok"


@pytest.mark.slow
def test_a_full_disk_ends_with_one_line_naming_the_file(tmp_path: Path) -> None:
    """Files may not grow past 300 kB (as on a full disk): checkpoints (~2 MB) cannot be
    written. The command says so in one line and exits 1, leaving no partial checkpoint."""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    result = subprocess.run(
        [sys.executable, "-m", "cnnlab.train", "model.impl=builtin", *QUICK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        timeout=600,
    )
    assert result.returncode == 1
    run_dir = _single_run(tmp_path)
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert f"could not write {run_dir}/checkpoints/" in error and "File too large" in error
    assert "Traceback" not in result.stderr
    assert list((run_dir / "checkpoints").iterdir()) == []  # no torn or temporary file
    record = _metrics(run_dir)
    assert record["status"] == "failed" and "could not write" in record["error"]
