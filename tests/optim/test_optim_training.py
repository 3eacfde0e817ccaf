"""``optimizer.impl`` in real runs: config checks, metrics.json, learning on digits, resume,
bf16 mixed precision, a ``-m`` sweep over optimizers and impls, and DDP."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import cnnlab.optim
from cnnlab.optim import optimizer_class
from cnnlab.train import train
from cnnlab.training.validate import ConfigError, validate_config
from training_helpers import NARROW_RUN as QUICK
from training_helpers import compose_run

LOG_10 = math.log(10)  # cross-entropy of a uniform guess over the 10 digits


def _ckpt(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


# -- choosing the class --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gd", "cnnlab.optim.GD"),
        ("sgd", "cnnlab.optim.SGD"),
        ("momentum", "cnnlab.optim.Momentum"),
        ("nesterov", "cnnlab.optim.Nesterov"),
        ("rmsprop", "cnnlab.optim.RMSProp"),
        ("adam", "cnnlab.optim.Adam"),
        ("adamw", "cnnlab.optim.AdamW"),
    ],
)
def test_every_optimizer_config_has_a_custom_twin(compose_config, name: str, expected: str) -> None:
    cfg = compose_config(f"optimizer={name}")
    assert cfg.optimizer.impl == "builtin"  # the default keeps torch.optim
    assert optimizer_class(cfg.optimizer) == cfg.optimizer._target_
    custom = OmegaConf.to_container(compose_config(f"optimizer={name}", "optimizer.impl=custom"))
    assert optimizer_class(custom["optimizer"]) == expected
    assert getattr(cnnlab.optim, expected.rsplit(".", 1)[1]) is not None


def test_a_config_without_impl_is_a_builtin_run() -> None:
    """Checkpoints written before optimizer.impl existed rebuild their torch.optim optimizer."""
    assert optimizer_class({"_target_": "torch.optim.Adam", "lr": 1e-3}) == "torch.optim.Adam"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("optimizer.impl=fast",), "optimizer.impl='fast' is not valid: expected custom"),
        (
            ("optimizer.impl=custom", "optimizer._target_=torch.optim.Adagrad"),
            "cnnlab.optim has no hand-written torch.optim.Adagrad",
        ),
        (
            ("optimizer._target_=cnnlab.optim.Adam",),
            "is hand-written: set optimizer.impl=custom",
        ),
    ],
)
def test_bad_impl_is_one_line(compose_config, overrides: tuple[str, ...], message: str) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError, match=message) as info:
        validate_config(cfg, resume=False)
    assert "\n" not in str(info.value)


# -- training ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_custom_adam_learns_digits_with_custom_layers(tmp_path: Path) -> None:
    """The article's setting by hand end to end: hand-written layers and hand-written Adam."""
    cfg = compose_run(
        tmp_path / "run",
        "model.impl=custom",
        "optimizer.impl=custom",
        "trainer.max_epochs=4",
        "viz.enabled=false",
    )
    metrics, module, _ = train(cfg)
    assert isinstance(module.trainer.optimizers[0], cnnlab.optim.Adam)
    assert metrics["test/acc"] >= 0.9, metrics


@pytest.mark.slow
def test_resume_with_custom_optimizer_is_bit_identical(tmp_path: Path) -> None:
    """2 + 1 epochs equal 3 straight (Adam's step counters and moments, a per-epoch LR
    schedule); a built-in run's checkpoint also continues under impl=custom as it would have
    under builtin."""
    setup = (*QUICK, "optimizer=adam", "scheduler=step", "scheduler.step_size=1")
    full, half = tmp_path / "full", tmp_path / "half"
    train(compose_run(full, *setup, "optimizer.impl=custom", "trainer.max_epochs=3"))
    train(compose_run(half, *setup, "optimizer.impl=custom", "trainer.max_epochs=2", "test=false"))
    last = half / "checkpoints" / "last.ckpt"
    resumed = (*setup, "optimizer.impl=custom", "trainer.max_epochs=3", f"ckpt_path={last}")
    _, module, _ = train(compose_run(half, *resumed, "test=false"))
    assert isinstance(module.trainer.optimizers[0], cnnlab.optim.Adam)
    a, b = _ckpt(full), _ckpt(half)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["optimizer_states"][0]["state"][0]["step"] == 3 * 6
    torch.testing.assert_close(a["optimizer_states"], b["optimizer_states"], rtol=0, atol=0)

    builtin, moved = tmp_path / "builtin", tmp_path / "moved"
    train(compose_run(builtin, *setup, "trainer.max_epochs=3", "test=false"))
    train(compose_run(moved, *setup, "trainer.max_epochs=2", "test=false"))
    last = moved / "checkpoints" / "last.ckpt"
    train(
        compose_run(
            moved, *setup, "trainer.max_epochs=3", f"ckpt_path={last}", "optimizer.impl=custom"
        )
    )
    a, b = _ckpt(builtin), _ckpt(moved)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(value, b["state_dict"][key], msg=key)


@pytest.mark.slow
def test_bf16_mixed_precision_keeps_fp32_master_weights(tmp_path: Path) -> None:
    metrics, module, _ = train(
        compose_run(
            tmp_path / "run",
            *QUICK,
            "optimizer=adamw",
            "optimizer.impl=custom",
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=2",
        )
    )
    assert all(p.dtype == torch.float32 for p in module.parameters())
    state = _ckpt(tmp_path / "run")["optimizer_states"][0]["state"]
    assert {v["exp_avg"].dtype for v in state.values()} == {torch.float32}
    assert metrics["test/loss"] < LOG_10, metrics


@pytest.mark.slow
def test_sweep_over_optimizers_and_impls(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "cnnlab.train", "-m", "optimizer=sgd,adam", "optimizer.impl=custom,builtin", *QUICK,
        "trainer.max_epochs=1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    records = [json.loads((sweep / str(j) / "metrics.json").read_text()) for j in range(4)]
    assert {(r["optimizer"], r["optimizer_impl"]) for r in records} == {
        (o, i) for o in ("sgd", "adam") for i in ("custom", "builtin")
    }
    assert all(r["status"] == "ok" for r in records), records
    adam = {r["optimizer_impl"]: r["test/loss"] for r in records if r["optimizer"] == "adam"}
    assert adam["custom"] < LOG_10 and adam["custom"] == pytest.approx(adam["builtin"], rel=1e-4)
    assert "optimizer.impl=custom" in (sweep / "summary.md").read_text()

    from cnnlab.report import write_report

    write_report(sweep, tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    assert "optimizer_impl" in report and "optimizer.impl=custom" in report


@pytest.mark.slow
def test_ddp_with_custom_optimizer(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "cnnlab.train", "trainer=ddp_cpu", "optimizer=adam", "optimizer.impl=custom", *QUICK,
        "trainer.max_epochs=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok" and record["optimizer_impl"] == "custom", record
    assert record["test/loss"] < LOG_10, record
    state = _ckpt(run)["optimizer_states"][0]["state"][0]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"] == 2 * 6


def test_a_custom_run_config_passes_the_checkpoint_allow_list() -> None:
    """A stored optimizer config keeps torch.optim's target (or names cnnlab.optim's class):
    both pass safe_config, so cnnlab-eval and resume rebuild such a run."""
    from cnnlab.training.safe_config import UnsafeConfigError, check_config

    for target in ("torch.optim.Adam", "cnnlab.optim.Adam", "cnnlab.optim.RMSProp"):
        check_config({"optimizer": {"_target_": target, "impl": "custom"}}, "run.ckpt")
    with pytest.raises(UnsafeConfigError, match="is not a class"):
        check_config({"optimizer": {"_target_": "cnnlab.optim.optimizer_class"}}, "run.ckpt")
