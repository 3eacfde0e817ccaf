"""``cnnlab-bench optim`` runs end to end (tiny repeats, no speed assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnlab.bench.__main__ import main


def test_optim_benchmark_writes_a_row_per_optimizer(tmp_path: Path, capsys) -> None:
    out = tmp_path / "optim.md"
    main(["optim", "--model", "seed_cnn", "--optimizers", "momentum,adamw", "--repeats", "2",
          "--warmup", "1", "--threads", "1", "--markdown", str(out)])  # fmt: skip
    text = out.read_text()
    assert "- command: cnnlab-bench optim --model seed_cnn" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if "x |" in line}
    assert set(rows) == {"momentum", "adamw"}
    cells = [c.strip() for c in rows["adamw"].split("|")[1:-1]]
    assert int(cells[1]) == 10 and int(cells[2].replace(",", "")) > 100_000  # seed CNN tensors
    assert float(cells[3]) > 0 and float(cells[4]) > 0


def test_optim_benchmark_rejects_unknown_optimizers() -> None:
    with pytest.raises(SystemExit, match="give one or more of gd,sgd"):
        main(["optim", "--optimizers", "lbfgs", "--repeats", "1"])
