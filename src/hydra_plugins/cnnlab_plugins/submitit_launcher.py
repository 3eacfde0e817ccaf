"""``hydra-submitit-launcher`` launchers whose requeued jobs continue from ``last.ckpt``
(``cnnlab.training.cluster``); selected by ``hydra/launcher=submitit_slurm|submitit_local``
(``conf/hydra/launcher/``)."""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _upstream
except ImportError:  # the `cluster` extra is not installed: no such launchers
    _upstream = None

if _upstream is not None:

    class _Continuing:
        """Mixed into the plugin's launchers; the job itself is unchanged."""

        def __init__(self, **params: Any) -> None:
            super().__init__(**params)
            if self._EXECUTOR == "slurm":
                from cnnlab.training.cluster import check_resources

                check_resources(self.params)

        def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
            import submitit

            from cnnlab.training.cluster import rank_overrides

            rank = submitit.JobEnvironment().global_rank
            return super().__call__(rank_overrides(sweep_overrides, rank), *args, **kwargs)

        def checkpoint(
            self,
            sweep_overrides: list[str],
            job_dir_key: str,
            job_num: int,
            job_id: str,
            singleton_state: dict[Any, Any],
        ) -> Any:
            """Called by submitit before it requeues a preempted or timed-out job (possibly
            before the job got as far as setting up Hydra)."""
            from cnnlab.training.cluster import resume_overrides

            run_dir = self._run_dir(sweep_overrides, job_dir_key, job_num, singleton_state)
            overrides = resume_overrides(sweep_overrides, run_dir)
            return super().checkpoint(overrides, job_dir_key, job_num, job_id, singleton_state)

        def _run_dir(
            self, overrides: list[str], job_dir_key: str, job_num: int, singleton_state: Any
        ) -> str:
            """The job's run folder: the running job's, else composed the way ``__call__`` and
            ``run_job`` would (the signal came before the job set Hydra up)."""
            from hydra.core.hydra_config import HydraConfig
            from hydra.core.singleton import Singleton
            from omegaconf import OmegaConf, open_dict

            if HydraConfig.initialized():
                return str(HydraConfig.get().runtime.output_dir)
            Singleton.set_state(singleton_state)
            config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
            with open_dict(config.hydra.job):
                config.hydra.job.num = job_num
            sweep_dir = OmegaConf.select(config, job_dir_key)
            return f"{sweep_dir}/{OmegaConf.select(config, 'hydra.sweep.subdir')}"

    class SlurmLauncher(_Continuing, _upstream.SlurmLauncher):
        """Each job of a ``-m`` sweep is one SLURM job (``nodes`` x ``tasks_per_node`` tasks)."""

    class LocalLauncher(_Continuing, _upstream.LocalLauncher):
        """The same jobs through submitit on this machine (what the tests use)."""
