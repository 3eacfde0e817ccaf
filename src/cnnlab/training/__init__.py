"""Lightning glue between configs, data, models and the entry points.

- ``module``    -- ``ClassificationModule``: objective (loss + L1/L2), metrics, optimizers.
- ``losses``    -- cross-entropy / softmax-MSE / NLL for either layer family, weight penalties.
- ``callbacks`` -- stop on a non-finite loss, save ``last.ckpt`` on Ctrl-C.
- ``builders``  -- config -> data module, model, module, trainer; ``load_run`` rebuilds a run.
- ``results``   -- ``metrics.json``, the per-run summary; ``summary`` -- the per-sweep table.
- ``ddp``       -- DDP child processes that re-run one Hydra job, also inside ``-m`` sweeps.
"""

from cnnlab.training.progress import register_resolvers

register_resolvers()  # ${cnnlab.if_tty:...} in conf/callbacks/default.yaml
