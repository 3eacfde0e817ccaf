"""``cnnlab-bench layers`` and ``step`` run end to end (tiny sizes, no speed assertions), and the
shared meters of ``cnnlab.measure`` count what a step really allocates and costs."""

from __future__ import annotations

import re
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


def _two_colour_set(root: Path) -> Path:
    """A CIFAR-shaped ImageFolder of reddish and bluish 32x32 images: learnt in a few steps."""
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 24), ("test", 8)):
        for label, colour in (("red", 0), ("blue", 2)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.rand(32, 32, 3, generator=gen) * 0.4
                pixels[..., colour] += 0.6
                Image.fromarray((pixels * 255).byte().numpy()).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_plain_loop_trains_both_impls_and_reports_mean_and_std(tmp_path, capsys) -> None:
    """``cnnlab-bench loop`` on a tiny two-colour ImageFolder: both impls learn it."""
    data, cache = str(_two_colour_set(tmp_path / "set")), str(tmp_path / "cache")
    main(
        [
            "loop",
            "--data",
            data,
            "--data-dir",
            cache,
            *["--epochs", "4", "--seeds", "2", "--batch", "8"],
        ]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in rows[2:]] == [
        "builtin, compile=none",
        "custom, compile=none",
    ]
    for row in rows[2:]:
        accuracy_mean = float(row.split("|")[4].split("±")[0])
        assert accuracy_mean > 90.0, row
        assert row.rstrip(" |").endswith("2")  # two seeds


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


def test_loop_starts_no_seed_that_would_end_past_its_limit() -> None:
    from cnnlab.bench.loop import LoopResult, _time_for_another

    done = [LoopResult(0, train_s=4.0, first_step_s=1.0, test_acc=0.5)]
    now = time.perf_counter()
    assert _time_for_another(done, now, None)
    assert _time_for_another(done, now, 10.0)
    assert not _time_for_another(done, now - 7.0, 10.0)  # 7 s gone + 4 s more > 10 s


def test_gpu_check_keeps_time_for_later_commands_and_goes_on_after_one_is_stopped() -> None:
    from cnnlab.bench.budget import Check, Task, run_tasks

    def sleeper(seconds: float):
        code = f"import time; print('| row |'); time.sleep({seconds}); print('| late |')"
        return lambda timeout_s: ["-c", code]

    check = Check(deadline=time.monotonic() + 16)
    written: list[int] = []
    tasks = [
        Task("a", "slow", sleeper(60), "benchmarks.md", "slow:"),
        Task("b", "quick", sleeper(0), "results.md", "quick:"),
        Task("c", "last", sleeper(0), "results.md", "last:"),
    ]
    started = time.monotonic()
    run_tasks(tasks, check, lambda c: written.append(len(c.log)), floor_s=5)

    assert time.monotonic() - started < 30  # the slow one was stopped 2 x 5 s before the end
    assert check.log[0].startswith("- slow: stopped at its 6 s of the budget")
    assert check.log[1].startswith("- quick: ok") and check.log[2].startswith("- last: ok")
    assert not check.ok and written == [1, 2, 3]
    assert check.sections["benchmarks.md"] == ["slow:\n\n| row |"]  # kept what it printed
    assert check.sections["results.md"][0] == "quick:\n\n| row |\n| late |"


def test_gpu_check_only_picks_commands_by_their_keys(capsys) -> None:
    from argparse import Namespace

    from cnnlab.bench import gpu_check

    args = Namespace(epochs=1, seeds=1)
    tasks = gpu_check.build_tasks(args, "d", gpu_check.Sizes.for_run(True), Path("s"))
    assert tuple(task.key for task in tasks) == gpu_check.KEYS
    with pytest.raises(SystemExit, match="2"):
        gpu_check.main(["--rehearse", "--data", ".", "--only", "tests,nope"])
    assert (
        "--only: unknown nope; choose from step-seed, loop-custom, tests" in capsys.readouterr().err
    )


def test_gpu_check_reads_pytest_closing_line() -> None:
    from cnnlab.bench.gpu_check import pytest_summary

    assert pytest_summary("...\n6 passed, 2 skipped, 1766 deselected in 80.12s\n") == (
        "6 passed, 2 skipped, 1766 deselected in 80.12s"
    )
    assert pytest_summary("==== 1 failed, 5 passed in 3.1s ====") == "1 failed, 5 passed in 3.1s"
    stopped = (
        "tests/gpu/test_a.py::test_x[seed] PASSED [ 10%]\n"
        "tests/gpu/test_a.py::test_y FAILED [ 20%]\n"
        "tests/layers/test_b.py::test_z PASSED [ 30%]\n"
    )
    assert pytest_summary(stopped) == (
        "stopped after 2 passed, 1 failed; failed: tests/gpu/test_a.py::test_y"
    )
    assert pytest_summary("no tests ran") == "stopped after no test"


@pytest.mark.slow
def test_gpu_check_rehearsal_runs_every_stage_and_writes_both_blocks(tmp_path: Path) -> None:
    """``gpu_check --rehearse``: the GPU run's commands at toy sizes on the CPU, so a lent GPU's
    minutes are not spent finding a wrong flag. The repository's docs stay untouched."""
    from cnnlab.bench import gpu_check

    docs = {name: (gpu_check.REPO / "docs" / name).read_text() for name in gpu_check.DOCS}
    data = _two_colour_set(tmp_path / "set")
    out = tmp_path / "out"
    argv = ["--rehearse", "--data", str(data), "--epochs", "2", "--seeds", "2", "--out", str(out)]
    assert gpu_check.main([*argv, "--budget", "900"]) == 0

    benchmarks, results = ((out / name).read_text() for name in gpu_check.DOCS)
    assert benchmarks.startswith(gpu_check.START) and "### CPU rehearsal" in benchmarks
    assert benchmarks.count(": ok,") == 8, benchmarks
    assert "seed CNN, batch 8" in benchmarks and "ResNet-20, batch 4" in benchmarks
    assert "| eager |" in benchmarks and "| cpu fp32 | conv1" in benchmarks
    for loop in ("builtin, compile=none", "custom, compile=none"):
        assert f"| {loop} |" in results
    assert re.search(r"\| builtin \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 2/2 \|", results)
    assert re.search(r"\| custom \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 2/2 \|", results)
    assert "=== plain loop, built-in eager" in (out / "gpu-check.log").read_text()
    assert {name: (gpu_check.REPO / "docs" / name).read_text() for name in gpu_check.DOCS} == docs
