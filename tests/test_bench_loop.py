"""``cnnlab-bench loop``: the article's experiment as a plain PyTorch loop, its seeds and its time
limit (tiny data, no speed assertions)."""

from __future__ import annotations

import time

import pytest
import torch

from bench_helpers import two_colour_set
from cnnlab.bench.__main__ import main


@pytest.mark.slow
def test_plain_loop_trains_both_impls_and_reports_mean_and_std(tmp_path, capsys) -> None:
    """``cnnlab-bench loop`` on a tiny two-colour ImageFolder: both impls learn it."""
    data, cache = str(two_colour_set(tmp_path / "set")), str(tmp_path / "cache")
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
    labels = [row.split("|")[1].strip() for row in rows[2:]]
    assert labels == [
        *("builtin, compile=none, seed 0", "builtin, compile=none, seed 1"),
        "builtin, compile=none",
        *("custom, compile=none, seed 0", "custom, compile=none, seed 1"),
        "custom, compile=none",
    ]
    for row in rows[2:]:
        train_s, warmup_s, steady_s, accuracy = (
            float(cell.split("±")[0]) for cell in row.split("|")[2:6]
        )
        assert accuracy > 90.0, row
        assert 0 <= warmup_s < train_s and steady_s == pytest.approx(train_s - warmup_s, abs=0.11)
        assert row.rstrip(" |").endswith("2" if row in (rows[4], rows[7]) else "1")


def test_loop_starts_no_seed_that_would_end_past_its_limit() -> None:
    from cnnlab.bench.loop import LoopResult, _time_for_another

    done = [LoopResult(0, train_s=4.0, warmup_s=1.0, test_acc=0.5)]
    now = time.perf_counter()
    assert _time_for_another(done, now, None)
    assert _time_for_another(done, now, 10.0)
    assert not _time_for_another(done, now - 7.0, 10.0)  # 7 s gone + 4 s more > 10 s


def test_loop_compiles_each_seed_afresh_on_full_batches_only(monkeypatch) -> None:
    """Seeds of a compiled loop stay within dynamo's recompile limit (with ``fullgraph=True``
    going past it is a hard error that loses every seed), and no ragged batch adds a graph."""
    from torch._dynamo.utils import counters

    from cnnlab.bench.loop import train_once

    compile_ = torch.compile  # the eager backend: dynamo's capture without inductor's minutes
    monkeypatch.setattr(
        torch,
        "compile",
        lambda fn, mode, fullgraph: compile_(fn, backend="eager", fullgraph=fullgraph),
    )
    gen = torch.Generator().manual_seed(0)
    images, labels = (
        torch.rand(10, 3, 8, 8, generator=gen),
        torch.randint(0, 10, (10,), generator=gen),
    )
    data = {"train": (images, labels), "test": (images, labels)}
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=1):
        results = [
            train_once(data, "custom", "default", seed, epochs=2, batch_size=4) for seed in range(3)
        ]

    assert [r.seed for r in results] == [0, 1, 2]
    assert counters["stats"]["unique_graphs"] == 3  # one per seed: 10 images = 2 full batches
    assert all(0 < r.warmup_s <= r.train_s and 0 <= r.test_acc <= 1 for r in results)
