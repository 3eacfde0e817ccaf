"""``cnnlab-bench layers`` runs end to end (tiny batch, one repeat; no timing assertions)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from cnnlab.bench.__main__ import main
from cnnlab.bench.cases import CASES
from cnnlab.bench.measure import peak_bytes


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_request_without_cuda_says_so() -> None:
    with pytest.raises(SystemExit, match="CUDA is not available"):
        main(["layers", "--device", "cuda"])


def test_bad_repeats_are_rejected(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["layers", "--repeats", "0"])
    assert "--repeats must be at least 1" in capsys.readouterr().err


def test_cpu_peak_memory_counts_what_the_step_allocates() -> None:
    """Linear 2048->512 on 256 rows: output, grad_input, grad_weight and grad_bias, in bytes."""
    layer = torch.nn.Linear(2048, 512)
    x = torch.randn(256, 2048, requires_grad=True)
    grad = torch.randn(256, 512)

    def step() -> None:
        layer(x).backward(grad)

    expected = 4 * (256 * 512 + 256 * 2048 + 512 * 2048 + 512)
    assert peak_bytes(step, torch.device("cpu")) == expected
