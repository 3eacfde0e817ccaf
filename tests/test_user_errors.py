"""Every mistake a user can fix ends the real CLI with exit status 1 and one line on stderr.

Each case runs the command in a subprocess, as a user would, and checks the last stderr line
(and, where the check comes before anything else runs, that it is the only line).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from checkpoint_helpers import plant_writer, write_checkpoint

pytestmark = pytest.mark.slow

QUICK = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "viz.enabled=false")


def one_line_error(result: subprocess.CompletedProcess, *fragments: str, only: bool = False) -> str:
    """The error line, after checking exit status 1, no traceback and every fragment in it."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    if only:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["trainer.max_epochs=abc"], ["Error: trainer.max_epochs='abc' is not valid"]),
        (["trainer.max_epochs=abc", "debug=fdr"], ["Error: trainer.max_epochs='abc'"]),
        (["data.batch_size=abc"], ["Error: data.batch_size='abc' is not valid", "integer"]),
        (["optimizer.lr=-1"], ["Error: optimizer.lr=-1 is not valid"]),
        (["model.impl=cuda"], ["Error: model.impl='cuda'", "custom", "builtin"]),
        (["loss.label_smoothing=2"], ["Error: loss.label_smoothing=2 is not valid"]),
        (["data=imagefolder"], ["Error: data.root is not set", "data.root="]),
        pytest.param(
            ["trainer=gpu"],
            ["Error: trainer.accelerator=gpu but PyTorch sees no CUDA GPU", "trainer=cpu"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU here"),
        ),
    ],
)
def test_bad_config_values(run_cli, overrides: list[str], fragments: list[str]) -> None:
    result = run_cli("cnnlab.train", *QUICK, *overrides)  # later overrides win
    one_line_error(result, *fragments, only=True)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        # refused by the model's constructor, which Hydra wraps in an InstantiationException
        (["model=resnet", "model.depth=7"], ["Error: model: ResNet depth must be 6n + 2", "got 7"]),
        # refused once the run's length is known, in configure_optimizers
        (
            ["scheduler=warmup_cosine", "scheduler.warmup_epochs=20"],
            ["Error: scheduler: the warm-up (40 steps) must fit in the run's 2 optimizer steps"],
        ),
    ],
)
def test_values_refused_after_the_config_check(run_cli, overrides, fragments) -> None:
    one_line_error(run_cli("cnnlab.train", *QUICK, *overrides), *fragments)


def test_eval_without_a_checkpoint_says_which_to_give(run_cli) -> None:
    one_line_error(run_cli("cnnlab.eval"), "Error: ckpt_path is not set", "ckpt_path=", only=True)


@pytest.mark.parametrize("command", ["cnnlab.export", "cnnlab.prune"])
def test_other_commands_that_read_a_checkpoint_say_which_to_give(run_cli, command) -> None:
    one_line_error(run_cli(command), "Error: ckpt_path is not set", "ckpt_path=", only=True)


def test_a_sweep_logs_a_jobs_config_error_in_one_line(run_cli) -> None:
    result = run_cli("cnnlab.train", "-m", *QUICK, "model.impl=builtin,wrong")
    assert result.returncode == 1, result.stderr[-3000:]  # after the other job has run
    assert "Error: 1 of 2 sweep jobs did not finish (1)" in result.stderr
    printed = result.stdout + result.stderr  # Hydra logs to stdout
    assert "Traceback" not in printed, printed[-3000:]
    assert "Job did not finish: model.impl='wrong' is not valid" in printed


def _damaged(tmp_path: Path, kind: str, compose_config) -> Path:
    path = tmp_path / f"{kind}.ckpt"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
        return path
    if kind == "empty":
        path.write_bytes(b"")
        return path
    if kind == "random":
        path.write_bytes(os.urandom(4096))
        return path
    whole = write_checkpoint(compose_config, tmp_path / "whole.ckpt").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # truncated: a copy that stopped half-way
    return path


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("truncated", "is truncated or not a PyTorch checkpoint"),
        ("empty", "is empty (0 bytes)"),
        ("random", "is truncated or not a PyTorch checkpoint"),
        ("missing", "does not exist"),
        ("directory", "is a folder"),
    ],
)
def test_resume_from_a_bad_checkpoint(run_cli, compose_config, tmp_path, kind, fragment) -> None:
    ckpt = _damaged(tmp_path, kind, compose_config)
    result = run_cli("cnnlab.train", f"ckpt_path={ckpt}", *QUICK)
    one_line_error(result, "Error: ", str(ckpt), fragment, only=True)


@pytest.mark.parametrize("kind", ["truncated", "directory"])
def test_eval_of_a_bad_checkpoint(run_cli, compose_config, tmp_path, kind) -> None:
    ckpt = _damaged(tmp_path, kind, compose_config)
    one_line_error(run_cli("cnnlab.eval", f"ckpt_path={ckpt}"), "Error: ", str(ckpt))


@pytest.mark.parametrize(
    "command",
    [
        ("cnnlab.eval", "ckpt_path={ckpt}"),
        ("cnnlab.viz.cli", "ckpt_path={ckpt}"),
        ("cnnlab.train", "ckpt_path={ckpt}", *QUICK),
    ],
    ids=["eval", "viz", "resume"],
)
def test_a_checkpoint_that_would_run_code_is_refused(run_cli, compose_config, tmp_path, command):
    victim = tmp_path / "written-by-the-checkpoint.txt"
    ckpt = write_checkpoint(compose_config, tmp_path / "evil.ckpt", edit=plant_writer(victim))
    module, *args = command
    result = run_cli(module, *(a.format(ckpt=ckpt) for a in args))
    one_line_error(result, "refused to load it", "logger.evil._target_", "pathlib.Path.write_text")
    assert not victim.exists()


def test_eval_of_a_checkpoint_of_another_model(run_cli, compose_config, tmp_path) -> None:
    def other_model(config: dict) -> None:
        config["model"]["hidden"] = 24  # the weights have 16 units

    ckpt = write_checkpoint(compose_config, tmp_path / "other.ckpt", edit=other_model)
    line = one_line_error(run_cli("cnnlab.eval", f"ckpt_path={ckpt}"), "does not fit the model")
    assert "model.classifier.fc1.weight [16, 8] vs [24, 8]" in line


def test_resume_with_a_model_the_checkpoint_does_not_fit(run_cli, compose_config, tmp_path) -> None:
    ckpt = write_checkpoint(compose_config, tmp_path / "narrow.ckpt")  # a narrower seed_cnn
    result = run_cli("cnnlab.train", f"ckpt_path={ckpt}", *QUICK)
    line = one_line_error(result, "does not fit this run's model", "model.impl may change")
    assert "model.features.conv1.weight [4, 1, 3, 3] vs [32, 1, 3, 3]" in line
    (log_file,) = (tmp_path / "outputs" / "train" / "runs").glob("*/train.log")
    assert log_file.read_text().rstrip().endswith(line)  # the run's log says why it stopped


def test_a_full_disk_names_the_file_and_leaves_no_partial_file(tmp_path: Path, monkeypatch) -> None:
    """ENOSPC as a filesystem reports it when the data reaches the disk (at ``fsync``): one
    line naming the file, exit 1, no temporary file left beside it."""
    import errno

    import cnnlab.training.atomic as atomic
    from cnnlab.report import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"status": "ok", "impl": "custom", "test/acc": 0.5}')
    out = tmp_path / "report"

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    with pytest.raises(SystemExit) as stop:
        main([str(run), "--out", str(out)])
    message = str(stop.value.code)
    assert message.startswith("cnnlab-report: "), message
    assert str(out) in message and "No space left on device" in message
    assert "\n" not in message
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
