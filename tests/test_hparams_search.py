"""`cnnlab-train -m hparams_search=seed_optuna`: an Optuna search that a stopped run continues."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

from omegaconf import OmegaConf  # noqa: E402

from cnnlab.train import objective  # noqa: E402
from cnnlab.training import hparams_search  # noqa: E402
from cnnlab.training.errors import UserError  # noqa: E402
from cnnlab.training.summary import collect_runs  # noqa: E402
from training_helpers import ONE_SHORT_EPOCH as QUICK  # noqa: E402


def test_objective_is_the_configured_metric_and_a_wrong_name_is_one_line() -> None:
    metrics = {"val/acc_best": 0.75, "test/acc": 0.5, "val/loss": 0.9}
    assert objective(OmegaConf.create({"optimized_metric": "test/acc"}), metrics) == 0.5
    assert objective(OmegaConf.create({"optimized_metric": None}), metrics) == 0.75
    assert math.isnan(objective(OmegaConf.create({}), {"test/acc": 0.5}))  # e.g. fast_dev_run
    with pytest.raises(UserError) as err:
        objective(OmegaConf.create({"optimized_metric": "val/accuracy"}), metrics)
    message = str(err.value)
    assert "\n" not in message and "optimized_metric=val/accuracy" in message
    assert "test/acc, val/acc_best, val/loss" in message


def test_interrupted_trials_are_failed_and_not_counted() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.1, 0.2):
        trial = study.ask()
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a trial that failed itself
    study.ask()  # left running by a stopped search
    study.enqueue_trial({"x": 1.0})  # waiting: still to run, not interrupted
    assert hparams_search.close_interrupted_trials(study) == 1
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL", "WAITING"]
    assert study.trials[3].user_attrs == {hparams_search.INTERRUPTED: True}
    assert hparams_search.counted_trials(study) == 3
    assert hparams_search.close_interrupted_trials(study) == 0


class _PluginSweeper:
    """What `hparams_search.sweep` uses of hydra-optuna-sweeper's `OptunaSweeperImpl`: a sweep
    that asks `n_trials` trials and launches them as jobs `job_idx`, `job_idx + 1`, ..."""

    def __init__(self, sweep_dir: Path, n_trials: int, seed: int | None = 3) -> None:
        self.config = OmegaConf.create(
            {
                "optimized_metric": "val/acc_best",
                "hydra": {
                    "sweep": {"dir": str(sweep_dir)},
                    "sweeper": {
                        "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": seed}
                    },
                },
            }
        )
        self.sampler = optuna.samplers.TPESampler(seed=seed)
        self.storage = f"sqlite:///{sweep_dir}/optuna.db"  # sweep_dir does not exist yet
        self.study_name = "test"
        self.n_trials = n_trials
        self.job_idx = 0
        self.launched: list[tuple[int, float]] = []

    def _get_directions(self) -> list[str]:
        return ["maximize"]

    def sweep(self, arguments: list[str]) -> None:
        study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        study.sampler = self.sampler
        for _ in range(self.n_trials):
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            assert trial.number == self.job_idx  # job folder N is trial N
            self.launched.append((self.job_idx, x))
            self.job_idx += 1
            study.tell(trial, x)


def test_a_continued_search_runs_only_the_missing_trials_with_new_parameters(
    tmp_path: Path,
) -> None:
    sweep_dir = tmp_path / "sweep"
    first = _PluginSweeper(sweep_dir, n_trials=2)
    hparams_search.sweep(first, [])
    assert [job for job, _ in first.launched] == [0, 1]
    study = optuna.load_study(study_name="test", storage=first.storage)
    study.ask()  # the next invocation was killed while this trial ran

    second = _PluginSweeper(sweep_dir, n_trials=5)
    hparams_search.sweep(second, [])
    # 2 counted, the interrupted one redone: 3 more, numbered after every earlier trial
    assert [job for job, _ in second.launched] == [3, 4, 5]
    # not the first invocation's random start-up draws again (same configured seed)
    assert {x for _, x in second.launched}.isdisjoint(x for _, x in first.launched)
    assert second.sampler._rng.rng.get_state()[1][0] != first.sampler._rng.rng.get_state()[1][0]

    third = _PluginSweeper(sweep_dir, n_trials=5)
    hparams_search.sweep(third, [])
    assert third.launched == []
    study = optuna.load_study(study_name="test", storage=first.storage)
    assert hparams_search.counted_trials(study) == 5
    results = OmegaConf.load(sweep_dir / hparams_search.RESULTS_FILE)
    assert results.best_value == max(x for _, x in first.launched + second.launched)
    assert (sweep_dir / hparams_search.HISTORY_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="seed_optuna", storage=f"sqlite:///{sweep}/optuna.db")


@pytest.mark.slow
def test_search_stopped_after_two_trials_continues_to_four(run_cli, tmp_path: Path) -> None:
    sweep = tmp_path / "search"
    command = ("-m", "hparams_search=seed_optuna", f"hydra.sweep.dir={sweep}", *QUICK)
    first = run_cli("cnnlab.train", *command, "hydra.sweeper.n_trials=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(_study(sweep).trials) == 2
    before = {job: (sweep / job / "metrics.json").read_text() for job in ("0", "1")}

    second = run_cli("cnnlab.train", *command, "hydra.sweeper.n_trials=4")
    assert second.returncode == 0, second.stderr[-3000:]
    trials = _study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert {job: (sweep / job / "metrics.json").read_text() for job in before} == before
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # no repeated draws

    for (
        trial
    ) in trials:  # job N is trial N; it ran the trial's parameters; its value is the objective
        record = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert record["status"] == "ok"
        assert record["val/acc_best"] == pytest.approx(trial.value)
        for name, value in trial.params.items():
            assert f"{name}={value}" in record["overrides"]
    rows = collect_runs(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    best = max(trials, key=lambda t: t.value)
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert dict(results.best_params) == best.params and results.best_value == best.value
    summary = (sweep / "summary.md").read_text()
    assert summary.count("| ok |") == 4 and "## Best trial" in summary
    assert f"`optimizer={best.params['optimizer']}`" in summary
    assert (sweep / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
