"""``callbacks=prune``: a real digits training reaches the target sparsity, still learns, and
writes checkpoints with torch.nn keys that load with weights_only=True."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException

from cnnlab.prune.callback import scheduled_sparsity
from cnnlab.training.builders import build_callbacks, build_datamodule, build_model, load_run
from cnnlab.training.errors import user_message

EPOCHS = ("trainer.max_epochs=4", "trainer=cpu", "viz.enabled=false")


def test_the_gradual_schedule_ramps_cubically_and_holds() -> None:
    ramp = [scheduled_sparsity(e, 0.8, "gradual", 1, 4) for e in range(7)]
    assert ramp[0] == 0.0 and ramp[4:] == [0.8, 0.8, 0.8]
    assert ramp[1] == pytest.approx(0.8 * (1 - 0.75**3))
    steps = [b - a for a, b in itertools.pairwise(ramp[1:5])]
    assert steps == sorted(steps, reverse=True)  # fast first, then slower
    assert [scheduled_sparsity(e, 0.5, "once", 2, 9) for e in range(4)] == [0, 0, 0.5, 0.5]


@pytest.mark.parametrize(
    ("override", "fragment"),
    (
        ("callbacks.prune.amount=1.0", "callbacks.prune.amount=1.0 is out of range"),
        ("callbacks.prune.method=magic", "callbacks.prune.method='magic' is not known"),
        ("callbacks.prune.scope=world", "callbacks.prune.scope='world' is not known"),
        ("callbacks.prune.end_epoch=-2", "callbacks.prune.end_epoch=-2 is not valid"),
    ),
)
def test_bad_pruning_settings_end_in_one_line(compose_config, override, fragment) -> None:
    cfg = compose_config("callbacks=prune", override)
    with pytest.raises(InstantiationException) as err:
        build_callbacks(cfg)
    message = user_message(err.value)
    assert message is not None and fragment in message and "\n" not in message


def _zero_fraction(state: dict, key: str) -> float:
    return float((state[key] == 0).float().mean())


@pytest.mark.slow
def test_pruning_while_training_digits_reaches_the_amount_and_learns(
    compose_config, tmp_path: Path
) -> None:
    from training_helpers import train_in_process

    run = train_in_process(
        tmp_path / "run",
        "callbacks=prune",
        "callbacks.prune.amount=0.7",
        "callbacks.prune.end_epoch=2",
        "model.impl=custom",
        *EPOCHS,
    )
    record = json.loads((run / "metrics.json").read_text())
    assert record["status"] == "ok"
    assert record["test/acc"] > 0.6  # chance is 0.1: it learns, pruned to 70 % in every layer
    dense_keys = build_model(compose_config(), build_datamodule(compose_config())).state_dict()
    for name in ("best", "last"):  # best.ckpt is chosen among epochs at the full amount
        state = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=True)["state_dict"]
        model_state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        assert model_state.keys() == dense_keys.keys()  # torch.nn keys: no _orig/_mask
        for key, value in model_state.items():
            if key.endswith("weight") and value.dim() > 1:
                assert int((value == 0).sum()) == round(0.7 * value.numel()), (name, key)
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "prune/sparsity" in metrics
    # its stored config names cnnlab.prune.callback.Pruning: still loadable as data
    cfg, module, _ = load_run(run / "checkpoints" / "last.ckpt")
    assert cfg.callbacks.prune._target_ == "cnnlab.prune.callback.Pruning"
    assert float((module.model.features.conv2.weight == 0).float().mean()) == pytest.approx(
        0.7, abs=1e-3
    )


@pytest.mark.slow
def test_structured_pruning_while_training_silences_whole_channels(tmp_path: Path) -> None:
    from training_helpers import train_in_process

    run = train_in_process(
        tmp_path / "run",
        "callbacks=prune",
        "callbacks.prune.method=structured",
        "callbacks.prune.amount=0.25",
        "callbacks.prune.schedule=once",
        "callbacks.prune.start_epoch=1",
        "model.impl=builtin",
        "model.batch_norm=true",
        *EPOCHS,
    )
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0.8
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for i, channels in enumerate((32, 64, 128), start=1):
        weight = state[f"model.features.conv{i}.weight"]
        dead = (weight.flatten(1) == 0).all(dim=1)
        assert int(dead.sum()) == round(0.25 * channels)
        assert (state[f"model.features.bn{i}.weight"][dead] == 0).all()
        assert (state[f"model.features.bn{i}.bias"][dead] == 0).all()
    hidden = state["model.classifier.fc1.weight"]
    assert int((hidden == 0).all(dim=1).sum()) == round(0.25 * 512)
    assert not (state["model.classifier.fc2.weight"] == 0).all(dim=1).any()  # classes kept


@pytest.mark.slow
def test_a_resumed_run_keeps_its_pruned_weights_at_zero(tmp_path: Path) -> None:
    """Checkpoints hold no masks: the resumed run must find them again in the baked zeros."""
    from training_helpers import train_in_process

    common = ("callbacks=prune", "callbacks.prune.amount=0.5", "callbacks.prune.end_epoch=0")
    run = train_in_process(tmp_path / "run", *common, "trainer=cpu", "viz.enabled=false",
                           "trainer.max_epochs=1", "model.impl=builtin")  # fmt: skip
    before = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    train_in_process(run, *common, "trainer=cpu", "viz.enabled=false", "trainer.max_epochs=3",
                     "model.impl=builtin", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    after = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in after.items():
        if key.endswith("weight") and value.dim() > 1:
            assert torch.equal(value == 0, before[key] == 0), key  # the same weights, still zero
            assert not torch.equal(value, before[key]), key  # while the others trained on
