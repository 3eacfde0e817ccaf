"""cnnlab-compare: custom and built-in layers agree to round-off in float64 for every model, and
the CLI writes a complete report (tables, figures, machine description) or a readable error."""

from __future__ import annotations

import contextlib
import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from cnnlab.compare import main as compare_main
from cnnlab.compare.environment import autocast_factory
from cnnlab.compare.numerics import ERROR_COLUMNS, compare_traces, trace_step
from cnnlab.compare.parity import ParityHistory, first_divergence
from cnnlab.compare.runner import Setup, compare_layers
from cnnlab.compare.timing import layer_memory
from cnnlab.paths import CONF_DIR

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))
SMALL = ("model.channels=[8,16,16]", "model.hidden=32")
CPU = torch.device("cpu")


def build(model_name: str, **options) -> torch.nn.Module:
    """The model as its config describes it (``options`` replace entries), for 1x8x8 digits."""
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{model_name}.yaml")
    return instantiate(cfg, in_shape=(1, 8, 8), num_classes=10, **options)


def worst(rows: list[dict], suffix: str) -> float:
    values = [r[c] for r in rows for c in ERROR_COLUMNS if c.endswith(suffix) and r[c] == r[c]]
    return max(values)


@pytest.mark.parametrize("model_name", MODELS)
def test_float64_layers_agree_to_round_off(model_name: str) -> None:
    torch.manual_seed(0)
    setup = Setup(CPU, torch.float64, autocast_factory(CPU, torch.float64, None))
    twins = setup.twins(build(model_name))
    images, labels = setup.batch(torch.randn(8, 1, 8, 8), torch.arange(8))
    traces = {
        impl: trace_step(m, loss, images, labels, setup.autocast)
        for impl, (m, loss) in twins.items()
    }
    rows = compare_traces(traces["custom"], traces["builtin"])
    assert {r["type"] for r in rows} >= {"Conv2d", "ReLU", "Linear", "CrossEntropyLoss"}
    assert all(r["grad_in_abs"] == r["grad_in_abs"] for r in rows), "a layer got no grad_input"
    assert worst(rows, "_abs") < 1e-10, rows
    assert worst(rows, "_rel") < 1e-10, rows


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_comparison_runs_and_stays_close(precision: str) -> None:
    torch.manual_seed(0)
    setup = Setup(CPU, torch.float32, autocast_factory(CPU, torch.float32, precision))
    model = build("seed_cnn", channels=[8, 16, 16], hidden=32)
    rows, step = compare_layers(model, torch.randn(8, 1, 8, 8), torch.arange(8), setup, 0, 1)
    assert worst(rows, "_rel") < 0.05  # low-precision round-off, not a wrong gradient
    assert step["fwd_ms_custom"] > 0 and step["bwd_ms_builtin"] > 0
    # memory is measured on CPU too (cnnlab.measure), for the step and for each layer
    assert step["peak_MB_custom"] > 0 and step["peak_MB_builtin"] > 0
    assert step["saved_MB_custom"] > 0
    assert all(r["peak_MB_builtin"] >= 0 and r["saved_MB_custom"] >= 0 for r in rows)
    assert max(r["peak_MB_custom"] for r in rows) > 0


def test_layer_memory_counts_a_linear_layers_output_and_saved_input() -> None:
    """Linear 2048->512 on 256 rows: its forward allocates the 0.5 MiB output and autograd keeps
    the 2 MiB input (the weight is a parameter, not counted); the loss keeps its log-softmax."""
    model = torch.nn.Sequential(torch.nn.Linear(2048, 512))
    images = torch.randn(256, 2048, requires_grad=True)
    labels = torch.randint(512, (256,))
    memory = layer_memory(
        model, torch.nn.CrossEntropyLoss(), images, labels, contextlib.nullcontext, CPU
    )
    assert memory["0"] == {"saved_MB": 2.0, "peak_MB": 0.5}
    assert memory["loss"]["saved_MB"] >= 0.5


def test_first_divergence_finds_the_step_where_losses_part() -> None:
    history = ParityHistory(
        step_loss={"custom": [2.3, 2.1, 1.9, float("nan")], "builtin": [2.3, 2.1, 1.8, 1.7]},
        step_acc={},
    )
    first, largest = first_divergence(history, tol=1e-3)
    assert first == 2 and math.isnan(largest)
    history.step_loss["custom"][3] = 1.7
    assert first_divergence(history, tol=1e-3) == (2, pytest.approx(0.1 / 1.8))
    history.step_loss["custom"][2] = 1.8
    assert first_divergence(history, tol=1e-3) == (None, 0.0)


def assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        assert np.asarray(image.convert("RGB"), dtype=float).std() > 0, f"{path.name} is blank"


def test_cli_writes_report_tables_and_figures(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "compare"
    argv = [
        "cnnlab-compare",
        *SMALL,
        "mode=both",
        "repeats=1",
        "warmup=0",
        "batch_size=16",
        "parity.epochs=2",
        "parity.max_batches=3",
        f"hydra.run.dir={out}",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    compare_main()
    report = (out / "report.md").read_text()
    for needle in (
        "| device | cpu |",
        "| dtype | float32 |",
        f"| torch | {torch.__version__} |",
        "| batch_size | 16 |",
        "| tf32 (matmul and cudnn) | n/a (CPU) |",
        "features.conv1",
        "whole step",
        "Training parity",
    ):
        assert needle in report
    with (out / "report.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["layer"] == "whole step" and float(rows[-1]["fwd_ratio"]) > 0
    assert {"fwd_rel", "grad_w_abs", "bwd_ms_custom", "saved_MB_builtin"} <= rows[0].keys()
    assert all(float(r["fwd_ms_custom"]) > 0 for r in rows)
    assert float(rows[-1]["peak_MB_custom"]) > 0 and float(rows[-1]["peak_MB_builtin"]) > 0
    assert all(r["bwd_ms_custom"] for r in rows), (
        "every layer, the first included, has a backward time"
    )
    for name in ("errors.png", "timing.png", "parity.png"):
        assert_real_png(out / name)
    with (out / "parity.csv").open() as f:
        assert {r["impl"] for r in csv.DictReader(f)} == {"custom", "builtin"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("precision=bf16 dtype=float64", "autocasts float32 work"),
        ("mode=fast", "mode must be one of"),
        ("dtype=float16", "dtype must be one of"),
        ("data=imagefolder", "data.root is not set"),
        ("data.val_fraction=2", "data.val_fraction=2 is not valid"),
    ],
)
def test_cli_explains_bad_settings(tmp_path, monkeypatch, override: str, message: str) -> None:
    argv = ["cnnlab-compare", *override.split(), f"hydra.run.dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=message):
        compare_main()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_cli_explains_missing_gpu(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["cnnlab-compare", "device=cuda", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        compare_main()


@pytest.mark.slow
@pytest.mark.parametrize("model_name", MODELS)
def test_cli_float64_report_for_every_model(tmp_path: Path, model_name: str) -> None:
    command = [
        sys.executable,
        "-m",
        "cnnlab.compare",
        f"model={model_name}",
        "dtype=float64",
        "mode=layers",
        "repeats=1",
        "warmup=0",
        "batch_size=16",
        f"hydra.run.dir={tmp_path}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with (tmp_path / "report.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["layer"] != "whole step"]
    errors = [float(r[c]) for r in rows for c in ERROR_COLUMNS if r[c] not in ("", "nan")]
    assert errors and max(errors) < 1e-10
