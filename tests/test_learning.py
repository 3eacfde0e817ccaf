"""Training learns: numbers a regression in the layers, the loss or the training loop would miss.

Measured on the project's CPU VM (seed 42, hand-written layers): the default digits run reaches
0.97 test accuracy; ``debug=overfit`` (20 epochs on 3 batches) takes the training loss from 2.3
to 0.024 (seed_cnn), 0.48 (lenet5), 0.004 (vgg) and 0.008 (resnet). The bounds below leave room
for other CPUs and library versions, not for a model that stopped learning.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.train import train
from cnnlab.training.module import FIT_METRICS, OTHER_FIT_METRICS, TEST_METRICS
from training_helpers import compose_run

pytestmark = pytest.mark.slow

#: test accuracy the default run (digits, seed_cnn, custom layers, 10 epochs) must reach
DEFAULT_RUN_TEST_ACC = 0.93
#: training loss each model must get below when memorising 3 batches (debug=overfit)
OVERFIT_TRAIN_LOSS = {"seed_cnn": 0.1, "lenet5": 0.8, "vgg": 0.1, "resnet": 0.1}


def test_default_digits_run_with_custom_layers_learns(tmp_path: Path) -> None:
    cfg = compose_run(tmp_path / "run", "model.impl=custom", "viz.enabled=false")
    metrics, _, _ = train(cfg)
    assert metrics["test/acc"] >= DEFAULT_RUN_TEST_ACC, metrics
    assert metrics["val/acc_best"] >= DEFAULT_RUN_TEST_ACC, metrics
    # the names a callback's monitor and optimized_metric are checked against before a run
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    logged = {k for k in header if not k.startswith(OTHER_FIT_METRICS)} - {"epoch", "step"}
    assert logged == {*FIT_METRICS, *TEST_METRICS}


@pytest.mark.parametrize("model", sorted(OVERFIT_TRAIN_LOSS))
def test_overfit_drives_the_training_loss_down(tmp_path: Path, model: str) -> None:
    cfg = compose_run(
        tmp_path / "run",
        f"model={model}",
        "model.impl=custom",
        "debug=overfit",
        "test=false",
        "viz.enabled=false",
        "trainer.enable_progress_bar=false",
    )
    _, module, _ = train(cfg)
    train_loss = float(module.trainer.callback_metrics["train/loss"])
    assert train_loss < OVERFIT_TRAIN_LOSS[model], f"{model}: train loss {train_loss:.3f}"
