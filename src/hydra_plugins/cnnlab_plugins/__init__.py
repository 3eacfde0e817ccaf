"""cnnlab's Hydra plugins: Hydra instantiates sweepers and launchers only from the
``hydra_plugins`` namespace package. Each is a thin subclass of the upstream plugin; the logic
lives in ``cnnlab.training`` (``hparams_search``, ``cluster``). A plugin whose upstream package
is not installed (the ``search``/``cluster`` extras) is simply not defined."""
