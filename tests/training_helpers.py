"""Run a real training job in-process, the way one job of a ``cnnlab-train`` sweep runs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from cnnlab.paths import CONF_DIR
from cnnlab.train import run

#: a narrow network and short epochs, for tests of the run machinery (resume, optimizers), not
#: of learning
NARROW_RUN = (
    "model.impl=builtin",
    "model.channels=[8,16,16]",
    "model.hidden=32",
    "trainer.limit_train_batches=6",
    "trainer.limit_val_batches=3",
    "trainer.limit_test_batches=3",
    "viz.enabled=false",
    "trainer.enable_progress_bar=false",
)
#: one short CPU epoch, for tests of what launches runs (searches, cluster launchers)
ONE_SHORT_EPOCH = (
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "viz.enabled=false",
)


def compose_run(out_dir: Path, *overrides: str) -> DictConfig:
    """``train.yaml`` composed with ``overrides`` as a CLI run would get it, writing to ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    return cfg


def train_in_process(out_dir: Path, *overrides: str) -> Path:
    """Compose ``train.yaml`` with ``overrides``, run it into ``out_dir`` and return that folder."""
    cfg = compose_run(out_dir, *overrides)
    run(cfg)
    GlobalHydra.instance().clear()
    return out_dir
