"""Running on clusters: SLURM (through submitit) and ``torchrun``, with the scheduler and
Lightning doing the work.

- Under SLURM, Lightning's ``SLURMEnvironment`` takes ranks, world size and the master address
  from SLURM and spawns no process itself: one SLURM task per GPU (``tasks_per_node =
  trainer.devices``, ``nodes = trainer.num_nodes``; ``conf/hydra/launcher/submitit_slurm.yaml``
  derives both). Under ``torchrun`` its ``TorchElasticEnvironment`` does the same. cnnlab's own
  DDP glue (``ddp.py``) only changes how Lightning *spawns* children, which it does in neither
  case.
- A preempted or timed-out SLURM job is requeued by submitit, which first asks the launcher's
  ``checkpoint()`` for the job to resubmit. cnnlab's launcher
  (``hydra_plugins.cnnlab_plugins.submitit_launcher``) resubmits the same job with
  ``ckpt_path=<its run folder>/checkpoints/last.ckpt`` once that file exists: the last.ckpt of
  the job's own folder, so the requeued job continues the run in place (``train.py``,
  ``training/resume.py``) instead of starting over.
- Every process of a multi-process job runs the whole entry point; only rank 0 writes the run
  folder's ``.hydra/`` and log file, the others log to stdout (as Lightning's own DDP children
  do, ``ddp.py``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cnnlab.training.errors import UserError
from cnnlab.training.resume import LAST, override_key

#: what a rank > 0 adds to its Hydra overrides: no .hydra/ and no file log in the run folder
NON_ZERO_RANK_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=stdout")


def resume_overrides(overrides: Sequence[str], run_dir: str | Path) -> list[str]:
    """``overrides`` of a job about to be requeued, made to continue ``run_dir``: its
    ``ckpt_path`` is the run folder's ``checkpoints/last.ckpt`` once that exists (else the job
    starts over: it was stopped before its first epoch ended)."""
    last = Path(run_dir) / "checkpoints" / LAST
    if not last.is_file():
        return list(overrides)
    kept = [o for o in overrides if override_key(o) != "ckpt_path"]
    return [*kept, f"ckpt_path={last.resolve()}"]


def launcher_rank(environ: Mapping[str, str] | None = None) -> int:
    """The global rank an external launcher gave this process: ``torchrun`` (``RANK``) or
    ``srun`` (``SLURM_PROCID``); 0 when there is none."""
    environ = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in environ and "RANK" in environ:
        return int(environ["RANK"])
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        return int(environ["SLURM_PROCID"])
    return 0


def rank_overrides(overrides: Sequence[str], rank: int) -> list[str]:
    """``overrides`` for process ``rank`` of a job: ranks > 0 leave the run folder to rank 0."""
    overrides = list(overrides)
    if rank == 0:
        return overrides
    given = {override_key(o) for o in overrides}
    return overrides + [o for o in NON_ZERO_RANK_OVERRIDES if override_key(o) not in given]


def rank_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """The command line of a process that ``torchrun``/``srun`` started: unchanged on rank 0;
    on other ranks ``NON_ZERO_RANK_OVERRIDES`` go right after the last override (argparse takes
    the overrides as one run of positional arguments)."""
    argv = list(argv)
    rank = launcher_rank(environ)
    overrides = [a for a in argv if not a.startswith("-") and "=" in a]
    extra = rank_overrides(overrides, rank)[len(overrides) :]
    if not extra:
        return argv
    at = max((i + 1 for i, a in enumerate(argv) if a in overrides), default=0)
    return [*argv[:at], *extra, *argv[at:]]


def check_resources(params: Mapping[str, Any]) -> None:
    """Fail before submitting when the job size cannot be what Lightning will expect."""
    for key in ("nodes", "tasks_per_node"):
        value = params.get(key)
        if not isinstance(value, int) or value < 1:
            raise UserError(
                f"hydra.launcher.{key}={value} cannot size a SLURM job (it follows "
                f"trainer.{'num_nodes' if key == 'nodes' else 'devices'}): set "
                "trainer.devices=N (GPUs per node) and trainer.num_nodes=M explicitly."
            )
