"""``torch.nn.SyncBatchNorm`` twin backed by the hand-written, all-reduced batch norm.

It is not a subclass of ``torch.nn.SyncBatchNorm``, on purpose: ``DistributedDataParallel``
rejects every instance of that class on CPU ("SyncBatchNorm layers only work with GPU modules",
torch's kernels being CUDA-only), while this one runs wherever ``torch.distributed`` does, gloo
on CPU included. Constructor, attributes (``process_group`` too), ``state_dict`` and ``repr`` are
torch's, so ``convert`` swaps the two like every other pair of twins.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from cnnlab.functional._utils import errors_named_after
from cnnlab.functional.batchnorm import batch_norm
from cnnlab.functional.sync_batchnorm import sync_batch_norm
from cnnlab.layers._swap import swap_classes
from cnnlab.layers.batchnorm import BatchNorm2d, check_channels, running_average_factor


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch statistics over the batches of every process of ``process_group`` (default: all).

    Like ``torch.nn.SyncBatchNorm``, it synchronises only in training mode with more than one
    process, and otherwise runs the single-process hand-written batch norm.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() < 2:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected an (N, C, ...) input of at "
                f"least 2 dimensions, got shape {tuple(input.shape)}"
            )
        check_channels(self, input)
        factor = running_average_factor(self)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        pass_running = not self.training or self.track_running_stats
        running_mean = self.running_mean if pass_running else None
        running_var = self.running_var if pass_running else None
        group = self._sync_group() if self.training else None
        with errors_named_after(self):
            if group is None:
                return batch_norm(
                    input,
                    running_mean,
                    running_var,
                    self.weight,
                    self.bias,
                    use_batch_stats,
                    factor,
                    self.eps,
                )
            return sync_batch_norm(
                input, running_mean, running_var, self.weight, self.bias, factor, self.eps, group
            )

    def _sync_group(self) -> dist.ProcessGroup | None:
        """The group to synchronise over, or None where this process is alone in it."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(
        cls, module: nn.Module, process_group: dist.ProcessGroup | None = None
    ) -> nn.Module:
        """``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` for the hand-written family:
        every ``cnnlab.layers.BatchNorm2d`` becomes a ``SyncBatchNorm``, weights shared."""
        return to_sync_batchnorm(module, process_group, {BatchNorm2d: cls})[0]


#: Each batch norm's synchronised twin in its own family (hand-written or ``torch.nn``).
SYNC_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    BatchNorm2d: SyncBatchNorm,
    nn.BatchNorm1d: nn.SyncBatchNorm,
    nn.BatchNorm2d: nn.SyncBatchNorm,
    nn.BatchNorm3d: nn.SyncBatchNorm,
}


def to_sync_batchnorm(
    model: nn.Module,
    process_group: dist.ProcessGroup | None = None,
    twins: Mapping[type[nn.Module], type[nn.Module]] = SYNC_TWINS,
) -> tuple[nn.Module, dict[nn.Module, type[nn.Module]]]:
    """Swap, in place, every batch norm whose exact type is a key of ``twins`` for its twin.

    Returns the model and, for each new SyncBatchNorm, the class it replaced: what
    :func:`from_sync_batchnorm` needs to give exactly that class back (``BatchNorm1d``, ``2d``
    and ``3d`` all become one ``torch.nn.SyncBatchNorm``).
    """
    model, pairs = swap_classes(
        model, lambda m: twins.get(type(m)), set_attrs={"process_group": process_group}
    )
    return model, {new: type(old) for old, new in pairs}


def from_sync_batchnorm(
    model: nn.Module, originals: Mapping[nn.Module, type[nn.Module]]
) -> nn.Module:
    """Undo :func:`to_sync_batchnorm`: each module of ``originals`` gets its old class back."""
    model, _ = swap_classes(model, originals.get, drop_attrs=("process_group",))
    return model
