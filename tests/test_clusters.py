"""Clusters: submitit launchers (SLURM, local), requeue-and-resume, torchrun/srun ranks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("submitit")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.errors import InstantiationException
from hydra.types import HydraContext
from hydra.utils import instantiate
from lightning.fabric.plugins.environments import (
    LightningEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import OmegaConf, open_dict

from cnnlab.paths import CONF_DIR
from cnnlab.training import cluster
from cnnlab.training.errors import UserError
from training_helpers import ONE_SHORT_EPOCH as QUICK
from training_helpers import train_in_process

pytestmark = pytest.mark.filterwarnings(
    r"ignore:\s*'hydra/launcher/submitit_\w+' is validated against"
)


def _launcher(tmp_path: Path, *overrides: str, job_started: bool = True):
    """The launcher `hydra/launcher=...` builds, set up as in a sweep writing to `sweep/`; with
    `job_started`, inside job 3 (Hydra set up, run folder `sweep/3`)."""
    GlobalHydra.instance().clear()
    HydraConfig.instance().cfg = None  # as in the process that submits a sweep
    sweep = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, sweep], return_hydra_config=True)
        loader = GlobalHydra.instance().hydra.config_loader
        launcher = instantiate(cfg.hydra.launcher)
        context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
        launcher.setup(hydra_context=context, task_function=lambda _: None, config=cfg)
        state = Singleton.get_state()
    GlobalHydra.instance().clear()
    if job_started:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "sweep" / "3")
        HydraConfig.instance().set_config(cfg)
    return launcher, state


@pytest.mark.parametrize("job_started", [True, False])
def test_a_requeued_job_continues_from_its_last_checkpoint(tmp_path: Path, job_started) -> None:
    launcher, state = _launcher(tmp_path, "hydra/launcher=submitit_local", job_started=job_started)
    assert type(launcher).__module__ == "hydra_plugins.cnnlab_plugins.submitit_launcher"
    job = ["model.impl=custom", "optimizer=sgd"]
    args = ("hydra.sweep.dir", 3, "job_id_for_3", state)

    # stopped in its first epoch: no last.ckpt yet, so the same job starts over
    delayed = launcher.checkpoint(job, *args)  # what submitit calls before requeueing
    assert delayed.function is launcher and delayed.args == (job, *args)

    last = tmp_path / "sweep" / "3" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    delayed = launcher.checkpoint(job, *args)
    resume = f"ckpt_path={last.resolve()}"  # train() continues the run in its own folder
    assert delayed.args == ([*job, resume], *args)
    again = launcher.checkpoint(delayed.args[0], *args)  # requeued again: still one ckpt_path
    assert [o for o in again.args[0] if o.startswith("ckpt_path=")] == [resume]


def test_slurm_job_size_follows_the_trainer(tmp_path: Path) -> None:
    launcher, _ = _launcher(
        tmp_path,
        "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    )
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    assert params["partition"] == "gpu" and params["max_num_timeout"] == 3
    with pytest.raises(InstantiationException) as err:  # ddp's default: every GPU there is
        _launcher(tmp_path, "hydra/launcher=submitit_slurm", "trainer=ddp")
    assert isinstance(err.value.__cause__, UserError)
    assert "trainer.devices=N" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, LightningEnvironment),
        (
            {
                "SLURM_NTASKS": "8",
                "SLURM_NTASKS_PER_NODE": "2",
                "SLURM_JOB_NAME": "train",
                "SLURM_NODELIST": "node[1-4]",
                "SLURM_JOB_ID": "123",
                "SLURM_PROCID": "5",
                "SLURM_LOCALID": "1",
                "SLURM_NODEID": "2",
            },
            SLURMEnvironment,
        ),
        (
            {
                "TORCHELASTIC_RUN_ID": "abc",
                "RANK": "5",
                "LOCAL_RANK": "1",
                "GROUP_RANK": "2",
                "WORLD_SIZE": "8",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "node1",
                "MASTER_PORT": "29500",
            },
            TorchElasticEnvironment,
        ),
    ],
)
def test_under_slurm_and_torchrun_lightning_spawns_nothing(monkeypatch, environ, expected):
    """trainer=ddp_cpu with 2 processes per node on 4 nodes: under SLURM/torchrun each process
    is already a rank, so the launcher cnnlab swaps in (ddp.py) is never used."""
    # OMP_NUM_THREADS: the launch may set it; monkeypatch puts back what was there
    for key in [
        *environ,
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "TORCHELASTIC_RUN_ID",
        "RANK",
        "OMP_NUM_THREADS",
    ]:
        monkeypatch.delenv(key, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)  # the Trainer sets it
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, num_nodes=4, logger=False, barebones=True
    )
    environment = trainer.strategy.cluster_environment
    assert type(environment) is expected
    if expected is LightningEnvironment:  # Lightning starts the other ranks (ddp.py's command)
        assert not environment.creates_processes_externally
        return
    threads = torch.get_num_threads()
    try:  # the launch runs the job in this process and starts no child
        assert trainer.strategy.launcher.launch(lambda: "ran") == "ran"
    finally:
        torch.set_num_threads(threads)
    assert trainer.strategy.launcher.procs == []
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (5, 1, 2)
    assert cluster.launcher_rank(environ) == 5
    assert cluster.rank_argv(["model.impl=custom"], environ) == [
        "model.impl=custom",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]


def test_rank_zero_and_single_processes_keep_their_command_line() -> None:
    argv = ["-m", "model.impl=custom,builtin"]
    assert cluster.rank_argv(argv, {}) == argv
    assert cluster.rank_argv(argv, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}) == argv
    assert cluster.rank_argv(argv, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == argv
    rank1 = {"TORCHELASTIC_RUN_ID": "x", "RANK": "1"}
    assert cluster.rank_argv(["-m", "a=1", "--cfg", "job"], rank1) == [
        "-m",
        "a=1",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
        "--cfg",
        "job",
    ]
    given = ["hydra/job_logging=stdout"]
    assert cluster.rank_overrides(given, 1) == [*given, "hydra.output_subdir=null"]


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_job_and_summarises(run_cli, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli(
        "cnnlab.train",
        "-m",
        "hydra/launcher=submitit_local",
        f"hydra.sweep.dir={sweep}",
        "model.impl=custom,builtin",
        "optimizer=sgd",
        *QUICK,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validated against ConfigStore schema" not in result.stderr
    for job, impl in (("0", "custom"), ("1", "builtin")):
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert record["status"] == "ok" and record["impl"] == impl
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / ".hydra" / "config.yaml").is_file()
    # each job ran as a submitit job: its own process, with submitit's logs and result pickle
    submitted = sorted(p.name for p in (sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(submitted) == 2, submitted
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in rows] == [("0", "ok"), ("1", "ok")]
    # same seed, init and data: both layer implementations reach the same accuracy
    custom, builtin = (float(r["test/acc"]) for r in rows)
    assert custom == pytest.approx(builtin, abs=0.02)

    # job 0 preempted now: what submitit resubmits continues the run in its own folder
    launcher, state = _launcher(tmp_path, "hydra/launcher=submitit_local", job_started=False)
    job = list(OmegaConf.load(sweep / "0" / ".hydra" / "overrides.yaml"))
    delayed = launcher.checkpoint(job, "hydra.sweep.dir", 0, "job_id_for_0", state)
    resubmitted = delayed.args[0]
    last = (sweep / "0" / "checkpoints" / "last.ckpt").resolve()
    assert resubmitted == [*job, f"ckpt_path={last}"]
    train_in_process(sweep / "0", *resubmitted, "trainer.max_epochs=2")  # an epoch was left
    record = json.loads((sweep / "0" / "metrics.json").read_text())
    assert record["status"] == "ok" and record["resumed_from"] == str(last)
    with (sweep / "0" / "csv" / "metrics.csv").open() as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("val/acc")}
    assert epochs == {"0", "1"}  # the history continued in place
