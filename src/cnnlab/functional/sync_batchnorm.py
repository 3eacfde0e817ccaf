"""Training-mode batch normalisation whose statistics, and their gradients, span a process group.

Every process normalises its own slice of the global batch with the mean and variance of the
*whole* batch, so DDP on N devices trains like one device on an N-times larger batch:

- forward: each process gathers every process's ``(count, mean, biased variance)`` per channel
  and merges them with Chan et al.'s parallel formula,
  ``mean = Σ nᵣ·meanᵣ / N``, ``var = Σ nᵣ·(varᵣ + (meanᵣ - mean)²) / N``,
  which is exact, free of the ``E[x²] - E[x]²`` cancellation, and weighs unequal (even empty)
  per-process batches correctly. One all-gather, as ``torch.nn.SyncBatchNorm`` does; the
  running statistics are updated from the global ones (unbiased with the global count).
- backward: the input gradient of batch norm needs two per-channel sums over the whole batch,
  ``Σg`` and ``Σg·(x - mean)``; they are all-reduced, then ``dx`` follows in closed form as in
  :mod:`cnnlab.functional.batchnorm`. The weight and bias gradients stay local, as in
  ``torch.nn.SyncBatchNorm``: DDP reduces them with every other parameter gradient.

Statistics are computed in float32 for bf16/fp16 input and the output keeps the input's dtype.
No value is read back to the host, so a step stays free of device synchronisation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from cnnlab.functional._utils import fresh_outputs, opmath_dtype
from cnnlab.functional.batchnorm import (
    _channel_view,
    _check_params,
    _update_running_stats,
    batch_statistics,
)


def _gather_rows(row: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every process's ``row`` stacked as ``(world_size, len(row))``, in rank order.

    gloo has no ``all_gather_into_tensor``; the list form works on every backend.
    """
    world_size = dist.get_world_size(group)
    if dist.get_backend(group) == "gloo":
        rows = [torch.empty_like(row) for _ in range(world_size)]
        dist.all_gather(rows, row, group=group)
        return torch.stack(rows)
    flat = row.new_empty(world_size * row.numel())
    dist.all_gather_into_tensor(flat, row, group=group)
    return flat.view(world_size, -1)


@torch.no_grad()
def global_batch_stats(
    input: torch.Tensor, group: dist.ProcessGroup | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance over the inputs of every process, and their count.

    All three are tensors in the statistics dtype (the count is a 0-d tensor): the global count
    is only known after the collective, and turning it into a Python number would block on it.
    """
    channels = input.shape[1]
    stats_dtype = opmath_dtype(input.dtype)
    count = input.numel() // channels
    if count > 0:
        dims = [d for d in range(input.dim()) if d != 1]
        var, mean = batch_statistics(input, dims)
    else:  # an empty slice still joins the collective, with weight 0
        mean = var = torch.zeros(channels, dtype=stats_dtype, device=input.device)
    local = torch.cat([mean.new_full((1,), count), mean, var])
    counts, means, variances = _gather_rows(local, group).split([1, channels, channels], dim=1)
    total = counts.sum()
    mean_all = (counts * means).sum(0) / total
    var_all = (counts * (variances + (means - mean_all).square())).sum(0) / total
    return mean_all, var_all, total


class _SyncBatchNorm(torch.autograd.Function):
    """Normalise with the global statistics; backward all-reduces the sums ``dx`` needs.

    Saves the input and the per-channel statistics, not a normalised copy (as ``_BatchNorm``).
    """

    @staticmethod
    @fresh_outputs
    def forward(ctx, input, weight, bias, mean, invstd, count, group):
        x = input.to(mean.dtype)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        output = torch.addcmul(_channel_view(shift, x.dim()), x, _channel_view(scale, x.dim()))
        ctx.group = group
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(input, weight, mean, invstd, count)
        return output.to(input.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        input, weight, mean, invstd, count = ctx.saved_tensors
        x, g = input.to(mean.dtype), grad.to(mean.dtype)
        dims = [d for d in range(x.dim()) if d != 1]
        view = lambda t: _channel_view(t, x.dim())  # noqa: E731
        centred = x - view(mean)
        sum_g = g.sum(dims)
        dot = (g * centred).sum(dims)  # = Σ g·x_hat / invstd, over this process's slice
        grad_input = None
        if ctx.needs_input_grad[0]:
            # Every process reaches this all-reduce: needs_input_grad is the same on all of them.
            sums = torch.cat([sum_g, dot])
            dist.all_reduce(sums, group=ctx.group)
            sum_g_all, dot_all = sums.chunk(2)
            # dx = gamma * invstd * (g - mean(g) - x_hat * mean(g * x_hat)), means over all N
            gamma = torch.ones_like(invstd) if weight is None else weight.to(mean.dtype)
            k = view(invstd * invstd * dot_all / count)
            grad_input = (g - view(sum_g_all / count)).sub_(centred.mul_(k))
            grad_input = grad_input.mul_(view(gamma * invstd)).to(input.dtype)
        grad_weight = None if weight is None else (dot * invstd).to(weight.dtype)
        grad_bias = None if ctx.bias_dtype is None else sum_g.to(ctx.bias_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None


def sync_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    momentum: float | torch.Tensor = 0.1,
    eps: float = 1e-5,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """``batch_norm(..., training=True)`` over the union of the batches of every process in ``group``.

    Every process of ``group`` must call it for the same layers in the same order (it runs a
    collective in forward and, when the input needs a gradient, one in backward), with the same
    channel count; batch sizes may differ and may be 0. Updates the running statistics in place.
    ``group=None`` is the default (world) group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "sync_batch_norm needs an initialised torch.distributed process group "
            "(torch.distributed.init_process_group); in a single process use batch_norm"
        )
    if input.dim() < 2:
        raise ValueError(
            f"sync_batch_norm expected input of shape (N, C, ...), got {tuple(input.shape)}"
        )
    _check_params(
        input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    mean, var, count = global_batch_stats(input, group)
    _update_running_stats(running_mean, running_var, mean, var, count, momentum)
    invstd = (var + eps).rsqrt()
    return _SyncBatchNorm.apply(input, weight, bias, mean, invstd, count, group)
