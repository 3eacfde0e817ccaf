"""``make gpu-check`` without a GPU: its time budget, which tests and tables it keeps, and a
rehearsal of every stage on the CPU at toy sizes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bench_helpers import two_colour_set


def test_gpu_check_gives_a_seeded_command_its_share_of_the_time() -> None:
    from cnnlab.bench.budget import Check, Task, run_tasks

    code = "import time; time.sleep(60)"
    check = Check(deadline=time.monotonic() + 12)
    tasks = [
        Task("a", "seeded", lambda _: ["-c", code], "results.md", "a:", share=0.5),
        Task("b", "next", lambda _: ["-c", "print('| b |')"], "results.md", "b:"),
    ]
    started = time.monotonic()
    run_tasks(tasks, check, lambda _: None, floor_s=2)

    assert time.monotonic() - started < 9  # stopped at half of 12 - 2 s, not at 10 s
    assert re.match(r"- seeded: stopped at its [45] s of the budget", check.log[0]), check.log
    assert check.log[1].startswith("- next: ok")


def test_gpu_check_runs_every_gpu_test() -> None:
    """Every test file that marks tests ``gpu`` is under the paths gpu-check hands pytest."""
    from cnnlab.bench.gpu_check import GPU_TESTS, REPO

    marking = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "tests").rglob("test_*.py")
        if re.search(r"^\s*@?pytest\.mark\.gpu\b", path.read_text(), flags=re.M)
    }
    assert marking, "no gpu-marked test found: has the marker been renamed?"
    missed = {path for path in marking if not path.startswith(GPU_TESTS)}
    assert not missed, f"gpu tests outside {GPU_TESTS}: {sorted(missed)}"


def test_step_and_layer_tables_keep_the_last_one_printed() -> None:
    from cnnlab.bench.gpu_check import last_table

    printed = (
        "header\n| eager | 1 |\n| --- |\ncompiling...\n| eager | 1 |\n| compile | 2 |\nwrote\n"
    )
    assert last_table(printed) == "| eager | 1 |\n| compile | 2 |"
    assert last_table("killed before any table") == ""


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
    data = two_colour_set(tmp_path / "set")
    out = tmp_path / "out"
    argv = ["--rehearse", "--data", str(data), "--epochs", "2", "--seeds", "2", "--out", str(out)]
    assert gpu_check.main([*argv, "--budget", "900"]) == 0

    benchmarks, results = ((out / name).read_text() for name in gpu_check.DOCS)
    assert benchmarks.startswith(gpu_check.START) and "### CPU rehearsal" in benchmarks
    assert benchmarks.count(": ok,") == len(gpu_check.KEYS), benchmarks
    assert "seed CNN, batch 8" in benchmarks and "ResNet-20, batch 4" in benchmarks
    assert "| eager |" in benchmarks and "| cpu fp32 | conv1" in benchmarks
    for loop in ("builtin, compile=none", "custom, compile=none"):
        assert f"| {loop} |" in results
    assert re.search(r"\| builtin \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 2/2 \|", results)
    assert re.search(r"\| custom \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 2/2 \|", results)
    assert "=== plain loop, built-in eager" in (out / "gpu-check.log").read_text()
    assert {name: (gpu_check.REPO / "docs" / name).read_text() for name in gpu_check.DOCS} == docs
