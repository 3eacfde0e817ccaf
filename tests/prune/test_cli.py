"""cnnlab-prune on a trained digits run: every amount in the report, the sparsity asked for,
structured copies smaller and faster, and every pruned checkpoint re-tested by cnnlab-eval."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from cnnlab.prune.cli import comma_list_argv, prune_run
from cnnlab.prune.options import PruneConfigError

SMALL = ("model.impl=builtin",)  # the article's widths: big enough for cuts to show in time


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from training_helpers import train_in_process

    run = tmp_path_factory.mktemp("trained") / "run"
    return train_in_process(run, *SMALL, "trainer.max_epochs=3", "trainer=cpu", "viz.enabled=false")


def rows_of(folder: Path) -> list[dict[str, str]]:
    with open(folder / "report.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_comma_amounts_become_a_list() -> None:
    assert comma_list_argv(["amount=0.3,0.5", "structured=true", "amount=[0.1,0.2]"]) == [
        "amount=[0.3,0.5]",
        "structured=true",
        "amount=[0.1,0.2]",
    ]


@pytest.mark.parametrize(
    ("override", "fragment"),
    (
        ("amount=[0.5,1.0]", "amount=1.0 is out of range"),
        ("amount=-0.2", "amount=-0.2 is out of range"),
        ("scope=world", "scope='world' is not known"),
        ("layers=[attention]", "layers=['attention'] is not valid"),
        ("finetune.epochs=-1", "finetune.epochs=-1 is not valid"),
    ),
)
def test_bad_settings_are_refused_before_anything_is_loaded(
    compose_config, override, fragment
) -> None:
    cfg = compose_config("ckpt_path=nowhere.ckpt", override, config_name="prune")
    with pytest.raises(PruneConfigError) as err:
        prune_run(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_unstructured_report_lists_every_amount_at_its_sparsity(
    trained: Path, run_cli, compose_config, tmp_path: Path
) -> None:
    done = run_cli(
        "cnnlab.prune",
        f"ckpt_path={trained}",
        "amount=0.5,0.9",  # the comma list of the issue, without -m
        "trainer=cpu",
        "timing.repeats=3",
        "hydra.run.dir=outputs/prune",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "outputs" / "prune"
    rows = rows_of(out)
    assert [float(r["amount"]) for r in rows] == [0.0, 0.5, 0.9]
    for row in rows:  # every layer at round(amount * n): the total within rounding
        assert float(row["sparsity"]) == pytest.approx(float(row["amount"]), abs=2e-3)
        assert int(row["params"]) == int(rows[0]["params"])  # same shapes, more zeros
    assert int(rows[2]["nonzero_params"]) < int(rows[1]["nonzero_params"])
    report = (out / "report.md").read_text()
    assert all(f"| {a} |" in report for a in ("0", "0.5", "0.9"))
    assert (out / "accuracy_vs_sparsity.png").stat().st_size > 1000
    assert not list(trained.glob("report*"))  # nothing written into the source run

    pruned = out / "checkpoints" / "unstructured-0.90.ckpt"
    state = torch.load(pruned, weights_only=True)["state_dict"]
    conv = state["model.features.conv2.weight"]
    assert int((conv == 0).sum()) == round(0.9 * conv.numel())
    from cnnlab.eval import evaluate  # what cnnlab-eval runs, in this process

    metrics = evaluate(compose_config(f"ckpt_path={pruned}", "trainer=cpu", config_name="eval"))
    assert metrics["test/acc"] == pytest.approx(float(rows[2]["test_acc"]), abs=1e-6)


@pytest.mark.slow
def test_structured_copies_are_smaller_faster_and_evaluate(compose_config, trained: Path) -> None:
    from cnnlab.eval import evaluate

    cfg = compose_config(
        f"ckpt_path={trained}",
        "amount=[0.25,0.5]",
        "structured=true",
        "finetune.epochs=1",
        "trainer=cpu",
        "timing.repeats=15",
        config_name="prune",
    )
    out = prune_run(cfg, ["amount=[0.25,0.5]", "structured=true", "finetune.epochs=1"])
    rows = rows_of(out)
    assert [float(r["amount"]) for r in rows] == [0.0, 0.25, 0.5]
    assert [r["widths"] for r in rows] == [
        "[32, 64, 128] / 512",
        "[24, 48, 96] / 384",
        "[16, 32, 64] / 256",
    ]
    params = [int(r["params"]) for r in rows]
    sizes = [float(r["size_mb"]) for r in rows]
    assert params == sorted(params, reverse=True) and params[2] < 0.4 * params[0]
    assert sizes == sorted(sizes, reverse=True) and sizes[2] < 0.6 * sizes[0]
    assert float(rows[2]["step_ms"]) < float(rows[0]["step_ms"])
    assert all(r["test_acc_finetuned"] for r in rows)

    slim = out / "checkpoints" / "structured-0.50.ckpt"
    checkpoint = torch.load(slim, weights_only=True)
    assert checkpoint["cnnlab_config"]["model"]["channels"] == [16, 32, 64]
    assert checkpoint["state_dict"]["model.features.conv2.weight"].shape == (32, 16, 3, 3)
    eval_cfg = compose_config(f"ckpt_path={slim}", "trainer=cpu", config_name="eval")
    metrics = evaluate(eval_cfg)
    assert metrics["test/acc"] == pytest.approx(float(rows[2]["test_acc_finetuned"]), abs=1e-6)


def test_a_resnet_is_refused_for_structured_pruning(compose_config, tmp_path: Path) -> None:
    from cnnlab.training.builders import build_datamodule, build_module, plain

    trained = compose_config("model=resnet", "model.depth=20", "model.impl=builtin")
    module = build_module(trained, build_datamodule(trained))
    ckpt = tmp_path / "resnet.ckpt"
    torch.save({"state_dict": module.state_dict(), "cnnlab_config": plain(trained)}, ckpt)
    cfg = compose_config(f"ckpt_path={ckpt}", "structured=true", config_name="prune")
    with pytest.raises(PruneConfigError, match=r"cannot cut channels out of ResNet \(its residual"):
        prune_run(cfg, ["structured=true"])
