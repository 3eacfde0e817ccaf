"""Pruning: masks while training (``callbacks=prune``) and ``cnnlab-prune`` for trained runs.

``masks``    -- which weights or channels go (magnitude / L1), applied and baked in;
``callback`` -- the Lightning callback behind ``conf/callbacks/prune.yaml``;
``slim``     -- structured pruning made physical: channels cut out, widths into the config;
``cli``      -- ``cnnlab-prune``; ``report`` -- its report.md/csv and plot.
"""

from cnnlab.prune.masks import bake, kept_channels, prune_model, unstructured_masks, weight_sparsity

__all__ = ["bake", "kept_channels", "prune_model", "unstructured_masks", "weight_sparsity"]
