"""DDP from a Hydra CLI, in single runs and inside ``-m`` sweeps.

Lightning's subprocess launcher starts ranks > 0 by re-running ``sys.argv`` with
``hydra.run.dir=<HydraConfig.run.dir>`` appended (``_hydra_subprocess_cmd``). Inside a sweep
that command still holds ``-m`` and the sweep lists, so every child re-launches the *whole*
sweep, and ``run.dir`` is not the job's folder, so outputs land twice and in the wrong place
(Lightning-AI/pytorch-lightning#11300, #15689; facebookresearch/hydra#2070). Here each child
re-runs exactly the current job as a single run instead: the job's resolved overrides,
``hydra.run.dir`` = the job folder, no ``.hydra/`` and no file log, so everything on disk is
written once, by rank 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd

# Hydra overrides that describe the sweep or the parent's own outputs, not the job.
_PARENT_ONLY = (
    "hydra.mode",
    "hydra.sweep",
    "hydra.run.dir",
    "hydra.job.name",
    "hydra.job.num",
    "hydra.job.id",
    "hydra.output_subdir",
    "hydra.launcher",
    "hydra.sweeper",
    "hydra/launcher",
    "hydra/sweeper",
    "hydra.job_logging",
    "hydra/job_logging",
)


def job_subprocess_command(module: str, local_rank: int) -> tuple[list[str], str]:
    """Command and cwd that start rank ``local_rank`` of the current Hydra job."""
    hydra_cfg = HydraConfig.get()
    hydra_overrides = [o for o in hydra_cfg.overrides.hydra if not o.startswith(_PARENT_ONLY)]
    command = [
        sys.executable,
        "-m",
        module,
        *hydra_cfg.overrides.task,
        *hydra_overrides,
        f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"',
        f"hydra.job.name=ddp_rank_{local_rank}",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]
    return command, get_original_cwd()


def use_job_subprocess_command(module: str) -> None:
    """Make Lightning start DDP children with ``job_subprocess_command`` for entry ``module``.

    ``module`` is named explicitly because console scripts (``cnnlab-train``) have no
    ``__main__.__spec__`` to recover it from.
    """
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as pytorch_launcher

    def command(local_rank: int) -> tuple[Sequence[str], str]:
        return job_subprocess_command(module, local_rank)

    fabric_launcher._hydra_subprocess_cmd = command
    pytorch_launcher._hydra_subprocess_cmd = command


@contextmanager
def isolated_job() -> Iterator[None]:
    """Undo a job's process group and the env vars Lightning set, so the next sweep job starts
    its own DDP world (fresh port, fresh children) instead of joining the finished one."""
    environ = dict(os.environ)
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
