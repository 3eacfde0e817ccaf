"""DDP from the Hydra CLI (2 CPU processes over gloo): outputs written once, by rank 0, in the
run's or job's own folder, for a single run and inside a `-m` sweep; batch norm synchronised by
the twin of the model's layer family; data workers shared among the processes of a machine."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import pytest
import torch.nn as nn
from lightning.pytorch.callbacks import Callback

import cnnlab.layers as CL
from cnnlab.data import DigitsDataModule
from cnnlab.data.base import default_num_workers
from cnnlab.training.builders import build_datamodule, build_trainer
from cnnlab.training.sync_batchnorm import SyncBatchNormPlugin, sync_batchnorm_options

TESTS_DIR = Path(__file__).parent

#: cross-entropy of a uniform guess over the 10 digit classes
LOG_10 = math.log(10)

QUICK = (
    "trainer=ddp_cpu",
    "model.impl=builtin",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "viz.enabled=false",
)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _assert_one_clean_run(run_dir: Path, learns: bool = True) -> None:
    files = _files(run_dir)
    assert files.count("metrics.json") == 1 and "train.log" in files
    assert not [f for f in files if f.endswith(".log") and f != "train.log"], files
    assert [f for f in files if f.startswith(".hydra/")] == [
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    ]
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "csv/metrics.csv"} <= set(files)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["status"] == "ok", record["error"]
    if learns:  # below a uniform guess: the two ranks trained the model together
        assert record["test/loss"] < LOG_10, record


@pytest.mark.slow
def test_ddp_single_run(run_cli, tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = tmp_path / "outputs"
    (run_dir,) = (outputs / "train" / "runs").iterdir()
    assert [p.name for p in outputs.iterdir()] == ["train"]
    _assert_one_clean_run(run_dir)
    assert result.stdout.count("Run folder:") + result.stderr.count("Run folder:") == 1


@pytest.mark.slow
def test_ddp_inside_a_sweep(run_cli, tmp_path: Path) -> None:
    result = run_cli("cnnlab.train", "-m", "optimizer=sgd,adam", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = tmp_path / "outputs" / "train"
    assert [p.name for p in outputs.iterdir()] == ["multiruns"]  # no stray single-run folders
    (sweep,) = (outputs / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):  # plain SGD (job 0) barely moves in 6 steps; Adam (job 1) learns
        _assert_one_clean_run(sweep / job, learns=job == "1")
    summary = (sweep / "summary.csv").read_text().splitlines()
    assert len(summary) == 3 and all(",ok," in row for row in summary[1:])


# -- batch norm under DDP: each family's own SyncBatchNorm ----------------------------------
class RecordLayerTypes(Callback):
    """Write each rank's model layer classes when fitting and testing start (used by the CLI
    test below through ``+callbacks.layer_types._target_=test_ddp.RecordLayerTypes``)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("fit", trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record("test", trainer, pl_module)

    def _record(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        types = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in pl_module.modules()})
        (self.path / f"{stage}-rank{trainer.global_rank}.json").write_text(json.dumps(types))


@pytest.mark.slow
def test_custom_ddp_run_keeps_every_layer_hand_written(
    run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
    )
    record = tmp_path / "layer_types"
    record.mkdir()
    result = run_cli(
        "cnnlab.train",
        *(o for o in QUICK if o != "model.impl=builtin"),
        "model.impl=custom",
        "model.batch_norm=true",
        "trainer.max_epochs=1",
        "+callbacks.layer_types._target_=test_ddp.RecordLayerTypes",
        f"+callbacks.layer_types.path={record}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        fit = json.loads((record / f"fit-rank{rank}.json").read_text())
        assert "cnnlab.layers.sync_batchnorm.SyncBatchNorm" in fit
        assert "cnnlab.layers.batchnorm.BatchNorm2d" not in fit
        torch_layers = [t for t in fit if t.startswith("torch.nn.modules.")]
        assert torch_layers == ["torch.nn.modules.container.Sequential"], torch_layers
    # After fitting the plugin reverts to the very classes the model was built with.
    test = json.loads((record / "test-rank0.json").read_text())
    assert "cnnlab.layers.batchnorm.BatchNorm2d" in test
    assert not [t for t in test if "SyncBatchNorm" in t or t.startswith("torch.nn.modules.batch")]


@pytest.mark.parametrize("name", ["ddp", "ddp_cpu"])
def test_ddp_configs_sync_batchnorm_with_the_family_plugin(compose_config, name: str) -> None:
    cfg = compose_config(f"trainer={name}")
    assert cfg.trainer.sync_batchnorm is True
    options = sync_batchnorm_options(cfg.trainer)
    assert options["sync_batchnorm"] is False  # Lightning's own swap would pick torch.nn's
    assert [type(p) for p in options["plugins"]] == [SyncBatchNormPlugin]
    if name == "ddp_cpu":  # the GPU config cannot build a trainer on a machine without GPUs
        trainer = build_trainer(cfg, build_datamodule(cfg))
        assert isinstance(trainer.strategy._layer_sync, SyncBatchNormPlugin)


def _mixed_model() -> nn.Sequential:
    return nn.Sequential(CL.BatchNorm2d(3), nn.BatchNorm2d(3), nn.BatchNorm1d(3), CL.ReLU())


def test_plugin_swaps_each_batch_norm_for_its_family_twin_and_back() -> None:
    model = _mixed_model()
    tensors = [list(m.parameters()) + list(m.buffers()) for m in model]
    plugin = SyncBatchNormPlugin()
    synced = plugin.apply(model)
    assert [type(m) for m in synced] == [
        CL.SyncBatchNorm,
        nn.SyncBatchNorm,
        nn.SyncBatchNorm,
        CL.ReLU,
    ]
    reverted = plugin.revert(synced)
    assert [type(m) for m in reverted] == [type(m) for m in _mixed_model()]
    assert [list(m.parameters()) + list(m.buffers()) for m in reverted] == tensors
    assert not any(hasattr(m, "process_group") for m in reverted)


def test_plugin_leaves_torch_batch_norm_alone_on_cpu_with_a_warning() -> None:
    module = L.LightningModule()
    module.model = _mixed_model()
    module.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    with pytest.warns(UserWarning, match=r"model\.1, model\.2 keep per-process batch statistics"):
        SyncBatchNormPlugin().apply(module)
    assert [type(m) for m in module.model] == [
        CL.SyncBatchNorm,
        nn.BatchNorm2d,
        nn.BatchNorm1d,
        CL.ReLU,
    ]


def test_plugin_names_the_subclasses_it_does_not_swap() -> None:
    class MyNorm(nn.BatchNorm2d):
        pass

    model = nn.Sequential(CL.BatchNorm2d(3), MyNorm(3))
    with pytest.warns(UserWarning, match=r"1 keep per-process .*only the exact torch\.nn and"):
        SyncBatchNormPlugin().apply(model)
    assert [type(m) for m in model] == [CL.SyncBatchNorm, MyNorm]


# -- data loader workers ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("in_memory", "augment", "processes", "expected"),
    [
        (True, True, 1, 8),
        (True, True, 2, 4),
        (True, True, 4, 2),
        (True, True, 16, 1),
        (False, False, 1, 8),
        (False, False, 4, 3),
        (False, False, 32, 1),
        (True, False, 1, 0),
    ],
)
def test_default_workers_share_the_cores_among_processes(
    monkeypatch: pytest.MonkeyPatch, in_memory: bool, augment: bool, processes: int, expected: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert default_num_workers(in_memory, augment, processes) == expected


def test_datamodule_counts_the_trainer_processes_on_this_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    datamodule = DigitsDataModule(data_dir=tmp_path, augment={"hflip": True})
    assert datamodule.num_workers == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # torchrun
    assert datamodule.num_workers == 4
    datamodule.trainer = L.Trainer(accelerator="cpu", devices=4, strategy="ddp", logger=False)
    assert datamodule.num_workers == 2
