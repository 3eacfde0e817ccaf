"""Optuna search through Hydra (``cnnlab-train -m hparams_search=seed_optuna``) that can stop
and continue.

``hydra-optuna-sweeper`` does the search: it asks the study for parameters, launches each trial
as a normal sweep job and tells the study the value ``cnnlab.train`` returns. cnnlab's sweeper
(``hydra_plugins.cnnlab_plugins.optuna_sweeper``: Hydra takes plugins only from the
``hydra_plugins`` package) calls ``sweep`` here, which adds what a resumable search needs around
the plugin's own loop, and nothing else:

- the sweep folder exists before the study opens, so ``storage: sqlite:///<sweep dir>/optuna.db``
  can be created there;
- ``n_trials`` is the size of the whole study, not of this invocation: rerunning the same
  command with ``hydra.sweep.dir=<that folder>`` runs only the trials still missing (trials a
  stopped search left running are marked failed, kept out of the count, and redone);
- job folders keep the study's trial numbers (job ``N`` is trial ``N``), so a continued search
  never writes into an earlier trial's folder;
- at the end, ``optimization_results.yaml`` (the plugin's file: best parameters and value, of
  the whole study also when nothing was left to run) and ``optimization_history.png``
  (Optuna's matplotlib plot).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import TrialState

from cnnlab.training.atomic import atomic_write

log = logging.getLogger(__name__)

HISTORY_PLOT = "optimization_history.png"
RESULTS_FILE = "optimization_results.yaml"  # written by hydra-optuna-sweeper
DEFAULT_STUDY_NAME = "cnnlab"
#: user attribute of a trial that a stopped search left unfinished (not counted in n_trials)
INTERRUPTED = "cnnlab_interrupted"


def close_interrupted_trials(study: optuna.Study) -> int:
    """Mark trials a stopped search left running as failed (and ``INTERRUPTED``); how many."""
    states = (TrialState.RUNNING,)  # not WAITING: enqueued trials are still to run
    stale = study.get_trials(deepcopy=False, states=states)
    for frozen in stale:
        optuna.Trial(study, frozen._trial_id).set_user_attr(INTERRUPTED, True)
        study.tell(frozen.number, state=TrialState.FAIL)
    return len(stale)


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards ``n_trials``: finished ones (complete, pruned, failed), except
    those a stopped search interrupted."""
    return sum(
        t.state.is_finished() and not t.user_attrs.get(INTERRUPTED)
        for t in study.get_trials(deepcopy=False)
    )


def save_history_plot(study: optuna.Study, path: str | Path, target_name: str) -> Path | None:
    """Optuna's optimization-history plot as a PNG; None when no trial completed."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot_optimization_history(study, target_name=target_name)
    figure = axes.get_figure()
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    try:
        atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=120))
    finally:
        plt.close(figure)
    return Path(path)


def sweep(impl: Any, arguments: list[str]) -> None:
    """Run ``hydra-optuna-sweeper``'s ``OptunaSweeperImpl.sweep`` as a continuable search.

    ``impl`` is the plugin's sweeper, already set up by Hydra (config, launcher).
    """
    sweep_dir = Path(str(impl.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    impl.study_name = impl.study_name or DEFAULT_STUDY_NAME
    if impl.storage is None:  # in memory: share one object, so the study can be reread
        impl.storage = InMemoryStorage()
    study = _open_study(impl)
    closed = close_interrupted_trials(study)
    done = counted_trials(study)
    total = impl.n_trials
    impl.n_trials = max(total - done, 0)
    impl.job_idx = len(study.get_trials(deepcopy=False))
    if impl.job_idx:
        impl.sampler = continued_sampler(
            impl.config.hydra.sweeper.sampler, impl.sampler, impl.job_idx
        )
    if done or closed:
        log.info(
            "Study %r in %s holds %d finished trial(s)%s; running %d more of n_trials=%d.",
            impl.study_name,
            _storage_name(impl.storage),
            done,
            f" and {closed} interrupted one(s), marked failed" if closed else "",
            impl.n_trials,
            total,
        )
    if impl.n_trials > 0:
        impl.sweep(arguments)
    _write_results(impl, _open_study(impl))


def continued_sampler(sampler_cfg: DictConfig, sampler: Any, offset: int) -> Any:
    """The sampler for a study that already holds ``offset`` trials.

    A sampler rebuilt with its configured seed would draw the same random start-up trials the
    first invocation drew; seeded with ``seed + offset`` a continued search draws new ones and
    is still repeatable. An unseeded sampler is reseeded at random.
    """
    seed = sampler_cfg.get("seed")
    if seed is None:
        if hasattr(sampler, "reseed_rng"):  # not the grid sampler, still a partial here
            sampler.reseed_rng()
        return sampler
    return instantiate(sampler_cfg, seed=int(seed) + offset)


def _open_study(impl: Any) -> optuna.Study:
    return optuna.create_study(
        study_name=impl.study_name,
        storage=impl.storage,
        sampler=impl.sampler,
        directions=impl._get_directions(),
        load_if_exists=True,
    )


def _write_results(impl: Any, study: optuna.Study) -> None:
    """Best trial of the whole study (what the plugin writes too, also when nothing was left to
    run) and the history plot; a multi-objective study keeps the plugin's Pareto front."""
    if len(study.directions) != 1:
        return
    sweep_dir = Path(str(impl.config.hydra.sweep.dir))
    try:
        best = study.best_trial
    except ValueError:  # no trial completed
        return
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
    metric = str(impl.config.get("optimized_metric") or "Objective Value")
    plot = save_history_plot(study, sweep_dir / HISTORY_PLOT, metric)
    if plot:
        log.info("Optimization history: %s", plot)


def _storage_name(storage: str | BaseStorage) -> str:
    return storage if isinstance(storage, str) else type(storage).__name__
