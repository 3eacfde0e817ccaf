"""``hydra-optuna-sweeper`` with a study that a stopped search continues
(``cnnlab.training.hparams_search``); selected by ``conf/hparams_search/*.yaml``."""

from __future__ import annotations

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _Upstream
except ImportError:  # the `search` extra is not installed: no such sweeper
    _Upstream = None

if _Upstream is not None:

    class OptunaSweeper(_Upstream):
        """The plugin's sweeper; ``sweep`` continues an existing study up to ``n_trials``."""

        def sweep(self, arguments: list[str]) -> None:
            from cnnlab.training import hparams_search

            hparams_search.sweep(self.sweeper, arguments)
