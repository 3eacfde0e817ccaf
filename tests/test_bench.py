"""``cnnlab-bench layers`` and ``step`` run end to end (tiny sizes, no speed assertions), and the
shared meters of ``cnnlab.measure`` count what a step really allocates and costs."""

from __future__ import annotations

import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.bench.__main__ import main
from cnnlab.bench.cases import CASES
from cnnlab.bench.step import Measurement, StepConfig, make_batch, measure_compiled, step_table
from cnnlab.measure import (
    MIB,
    allocator_peak_bytes,
    interleaved_timings,
    peak_bytes,
    tracking_memory,
)

CPU = torch.device("cpu")


def test_layers_benchmark_writes_a_row_per_case(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.md"
    main(["layers", "--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1",
          "--markdown", str(out)])  # fmt: skip

    printed = capsys.readouterr().out
    written = out.read_text()
    assert "cpu:" in written and f"torch: {torch.__version__}" in written
    rows = [line for line in written.splitlines() if line.startswith("| cpu fp32")]
    assert [row.split("|")[2].strip() for row in rows] == [case.name for case in CASES]
    assert rows[0] in printed


def test_console_script_is_wired(capsys) -> None:
    (script,) = entry_points(group="console_scripts", name="cnnlab-bench")
    assert script.load() is main
    with pytest.raises(SystemExit, match="0"):
        main(["layers", "--help"])
    assert "--markdown" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="0"):
        main(["step", "--help"])
    assert "--compile-mode" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.parametrize("command", ["layers", "step"])
def test_cuda_request_without_cuda_says_so(command: str) -> None:
    with pytest.raises(SystemExit, match="CUDA is not available"):
        main([command, "--device", "cuda"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["layers", "--repeats", "0"], "--repeats must be at least 1"),
        (["step", "--mode", "eager,jit"], "give one or more of eager,compile"),
        (["step", "--impls", ""], "give one or more of builtin,custom"),
    ],
)
def test_bad_options_are_rejected(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        main(args)
    assert message in capsys.readouterr().err


def _linear_step() -> tuple[object, int]:
    """Linear 2048->512 on 256 rows and what its step allocates: output, grad_input, grad_weight
    and grad_bias, in bytes."""
    layer = torch.nn.Linear(2048, 512)
    x = torch.randn(256, 2048, requires_grad=True)
    grad = torch.randn(256, 512)

    def step() -> None:
        layer(x).backward(grad)

    return step, 4 * (256 * 512 + 256 * 2048 + 512 * 2048 + 512)


def test_cpu_peak_memory_counts_what_the_step_allocates() -> None:
    step, expected = _linear_step()
    assert peak_bytes(step, CPU) == expected


def test_allocator_events_agree_with_live_bytes_on_an_eager_step() -> None:
    """The meter used for compiled CPU steps counts the same bytes as LiveBytes in eager."""
    step, expected = _linear_step()
    assert allocator_peak_bytes(step) == expected
    assert peak_bytes(step, CPU, compiled=True) == expected


def test_memory_spans_restart_their_peak() -> None:
    with tracking_memory(CPU) as tracker:
        first = tracker.restart()
        kept = torch.ones(MIB // 4)  # 1 MiB of float32, alive through the second span
        assert tracker.peak_since(first) == MIB
        second = tracker.restart()
        assert second == first + MIB
        temporary = torch.ones(MIB // 2) * 2  # 2 MiB twice over, one freed right away
        del temporary
        assert tracker.peak_since(second) == 4 * MIB
    assert kept.sum() == MIB // 4


def test_interleaved_timings_keep_warm_up_apart() -> None:
    """A step that is slow only on its first call (as a compiled one is): warm-up holds the
    slow call, the median only the fast ones."""
    calls = {"slow_start": 0, "steady": 0}

    def slow_start() -> None:
        calls["slow_start"] += 1
        time.sleep(0.2 if calls["slow_start"] == 1 else 0.001)

    def steady() -> None:
        calls["steady"] += 1
        time.sleep(0.001)

    timings = interleaved_timings(
        {"slow_start": slow_start, "steady": steady}, CPU, repeats=3, warmup=1
    )
    assert calls == {"slow_start": 4, "steady": 4}
    assert timings["slow_start"].warmup_s >= 0.2 > timings["steady"].warmup_s
    assert 0.001 <= timings["slow_start"].median_s < 0.1
    assert len(timings["steady"].runs_s) == 3 and timings["steady"].warmup_calls == 1
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        interleaved_timings({"steady": steady}, CPU, repeats=0, warmup=0)


def _rows(text: str) -> dict[str, list[str]]:
    """The step table's rows by mode, as lists of cells."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("eager", "compile"):
            rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize(
    "extra", [[], ["--optimizer", "adam", "--precision", "bf16", "--model", "seed_cnn"]]
)
def test_step_benchmark_eager_row(tmp_path: Path, capsys, extra: list[str]) -> None:
    out = tmp_path / "step.md"
    argv = ["step", "--model", "lenet5", "--batch", "4", "--repeats", "2", "--warmup", "1",
            "--threads", "1", "--mode", "eager", "--markdown", str(out), *extra]  # fmt: skip
    main(argv)

    printed = capsys.readouterr().out
    written = out.read_text()
    assert f"command: cnnlab-bench {' '.join(argv)}" in written
    assert "cpu:" in written and f"torch: {torch.__version__}" in written
    rows = _rows(written)
    assert list(rows) == ["eager"]
    eager = rows["eager"]
    assert "| eager " in printed
    builtin_ms, custom_ms, builtin_s, custom_s = map(
        float, (eager[1], eager[2], eager[4], eager[5])
    )
    builtin_mib, custom_mib = float(eager[7]), float(eager[8])
    assert 0 < builtin_ms < 10_000 and 0 < custom_ms < 10_000
    assert builtin_s > builtin_ms / 1e3 / 10 and custom_s > 0
    assert 0 < builtin_mib < 1000 and 0 < custom_mib < 1000
    # ratios are of the unrounded numbers
    assert float(eager[3].rstrip("x")) == pytest.approx(custom_ms / builtin_ms, rel=0.05)
    assert float(eager[9].rstrip("x")) == pytest.approx(custom_mib / builtin_mib, rel=0.05)
    assert eager[10] == "-" and eager[11] == ""


class BreaksGraph(nn.Module):
    """A model + loss that dynamo cannot capture in one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = self.fc(x.flatten(1))
        torch._dynamo.graph_break()
        return F.cross_entropy(logits, target)


def test_compile_failure_becomes_a_note_in_its_row() -> None:
    config = StepConfig(batch=4, repeats=1, warmup=1, fullgraph=True)
    failed = measure_compiled({"custom": BreaksGraph()}, make_batch(config), config)["custom"]
    assert failed.step_ms is None and failed.error is not None
    assert failed.error.startswith("Unsupported: ") and "graph_break" in failed.error
    assert "\n" not in failed.error

    table = step_table({"compile": {"builtin": Measurement(2.0, 30.0, 1.5, 1), "custom": failed}})
    row = _rows(table)["compile"]
    assert row[1:4] == ["2.00", "-", "-"] and row[10] == "1/-"
    assert row[11] == f"custom: {failed.error}"


@pytest.mark.slow
def test_step_benchmark_compiles_builtin_layers(capsys) -> None:
    main(["step", "--model", "lenet5", "--batch", "4", "--repeats", "2", "--warmup", "1",
          "--threads", "1", "--mode", "eager,compile", "--impls", "builtin"])  # fmt: skip
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["eager", "compile"]
    compiled = rows["compile"]
    assert compiled[11] == "", compiled[11]
    assert float(compiled[1]) > 0 and float(compiled[7]) > 0
    assert float(compiled[4]) > float(rows["eager"][4]), "compiling costs more than eager calls"
    assert compiled[10] == "1/-", "one graph, no recompiles"
    assert compiled[2] == "-" and compiled[3] == "-"


def test_coverage_counts_hand_written_layers_and_time_and_names_builtin_kernels() -> None:
    """MobileNetV2 on digits: every layer hand-written, most of the step in cnnlab Functions,
    and the one built-in kernel its own forward calls (``F.adaptive_avg_pool2d``) is named."""
    from cnnlab.bench import coverage

    forward = coverage._functions()[0].forward
    result = coverage.measure("mobilenet_v2", (1, 8, 8), batch=4, steps=1)
    assert coverage._functions()[0].forward is forward  # the labels are taken off again
    assert result.handwritten_layers == result.layers > 100
    assert 0.3 < result.handwritten_s / result.step_s < 1.0
    assert "aten::adaptive_avg_pool2d" in result.builtin_kernels
