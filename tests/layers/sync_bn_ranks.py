"""What each of the two gloo processes of test_sync_batchnorm.py runs, and the cases it runs.

Every rank runs each case twice in the same process group: with ``cnnlab.layers.SyncBatchNorm``
(under the no-built-in-fallback guard) and with ``torch.nn.SyncBatchNorm``, and saves outputs,
gradients and buffers for the test process to compare.

``torch.nn.SyncBatchNorm`` refuses CPU input, and four of the ATen kernels its autograd Function
calls exist for CUDA only. To run torch's own module and Function (its all-gather of per-rank
statistics, count weighting, running-statistics update, backward all-reduce, empty-rank
handling) on gloo, :func:`torch_sync_batchnorm_on_cpu` lifts the device check and gives those
kernels CPU implementations, written from their CUDA definitions. The test also checks both
against one ``torch.nn.BatchNorm2d`` over the concatenated global batch, which involves none of
this.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from layer_testing import forbid_builtins

import cnnlab.layers as L

WORLD_SIZE = 2
CHANNELS = 3


@dataclass(frozen=True)
class Case:
    """Training steps of one SyncBatchNorm on two ranks.

    ``sizes[step] = (rank 0 batch, rank 1 batch)``; ``eval_step`` adds a final step in eval mode.
    """

    sizes: tuple[tuple[int, int], ...]
    kwargs: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float64  # parameters and buffers
    input_dtype: torch.dtype | None = None  # default: dtype
    spatial: tuple[int, ...] = (4, 5)
    channels_last: bool = False
    eval_step: bool = False
    torch_reference: bool = True  # compare with torch.nn.SyncBatchNorm too

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global input and upstream gradient of ``step`` (every process draws the same)."""
        sizes = self.sizes[step] if step < len(self.sizes) else (2, 3)
        gen = torch.Generator().manual_seed(100 + step)
        shape = (sum(sizes), CHANNELS, *self.spatial)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (step + 2) + step - 1
        g = torch.randn(shape, generator=gen, dtype=torch.float64)
        dtype = self.input_dtype or self.dtype
        x, g = x.to(dtype), g.to(dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, g

    def rank_slice(self, step: int, rank: int) -> slice:
        sizes = self.sizes[step] if step < len(self.sizes) else (2, 3)
        start = sum(sizes[:rank])
        return slice(start, start + sizes[rank])

    @property
    def steps(self) -> int:
        return len(self.sizes) + self.eval_step


CASES: dict[str, Case] = {
    "equal": Case(((3, 3),)),
    "unequal": Case(((2, 5),)),
    "one-rank-empty": Case(((0, 4),)),
    "one-value-per-rank": Case(((1, 1),), spatial=(1, 1)),
    "ema-3-steps-then-eval": Case(((2, 5), (4, 1), (3, 3)), eval_step=True),
    "cumulative-average": Case(((2, 5), (4, 1), (3, 3)), {"momentum": None}),
    "no-affine-no-running-stats": Case(
        ((4, 2), (1, 3)), {"affine": False, "track_running_stats": False}
    ),
    "eps-and-momentum": Case(((3, 2),), {"eps": 0.5, "momentum": 0.7}),
    "channels-last": Case(((2, 3),), channels_last=True),
    "3d-input": Case(((2, 3),), spatial=(7,)),
    "float32": Case(((5, 2),), dtype=torch.float32),
    # bf16 activations with float32 parameters, as under autocast: statistics in float32.
    "bf16-input": Case(
        ((5, 2), (3, 4)), dtype=torch.float32, input_dtype=torch.bfloat16, torch_reference=False
    ),
}


def build(case: Case, cls: type[nn.Module]) -> nn.Module:
    """The case's layer, with non-trivial affine parameters."""
    module = cls(CHANNELS, **case.kwargs).to(case.dtype)
    if module.weight is not None:
        with torch.no_grad():
            module.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
            module.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    return module


def run_case(case: Case, cls: type[nn.Module], rank: int, guard: bool) -> dict[str, torch.Tensor]:
    """The last step's output and gradients and the final buffers of this rank's module."""
    module = build(case, cls)
    result: dict[str, torch.Tensor] = {}
    for step in range(case.steps):
        module.train(step < len(case.sizes))
        module.zero_grad(set_to_none=True)
        x, g = case.batch(step)
        x = x[case.rank_slice(step, rank)].detach().requires_grad_()
        with forbid_builtins() if guard else contextlib.nullcontext():
            out = module(x)
            out.backward(g[case.rank_slice(step, rank)])
        # torch leaves the gradients of an empty slice as None: zeros, as autograd reads them
        grad_input = torch.zeros_like(x) if x.grad is None else x.grad
        result = {"output": out.detach(), "grad_input": grad_input}
        for name, param in module.named_parameters():
            result[f"grad_{name}"] = torch.zeros_like(param) if param.grad is None else param.grad
    return {**result, **module.state_dict()}


def run_rank(rank: int, init_file: str, out_dir: str) -> None:
    """Entry point of one spawned process: every case, both implementations, results saved."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        results = {}
        for name, case in CASES.items():
            results[name] = {"cnnlab": run_case(case, L.SyncBatchNorm, rank, guard=True)}
            if case.torch_reference:
                with torch_sync_batchnorm_on_cpu():
                    results[name]["torch"] = run_case(case, nn.SyncBatchNorm, rank, guard=False)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# -- torch.nn.SyncBatchNorm on CPU -------------------------------------------------------------
def _dims(x: torch.Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, *([1] * (like.dim() - 2)))


def _acc(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _stats(input, eps):
    var, mean = torch.var_mean(input.to(_acc(input)), _dims(input), correction=0)
    return mean, (var + eps).rsqrt()


def _gather_stats_with_counts(
    input, mean, invstd, running_mean, running_var, momentum, eps, counts
):
    counts = counts.to(mean.dtype).view(-1, 1)
    total = counts.sum()
    mean_all = (counts * mean).sum(0) / total
    var_all = (counts * (invstd.pow(-2) - eps + (mean - mean_all).square())).sum(0) / total
    with torch.no_grad():
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(momentum * mean_all.to(running_mean.dtype))
        if running_var is not None:
            unbiased = var_all * total / (total - 1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
    return mean_all, (var_all + eps).rsqrt()


def _elemt(input, weight, bias, mean, invstd, eps):
    out = (input.to(mean.dtype) - _view(mean, input)) * _view(invstd, input)
    if weight is not None:
        out = out * _view(weight.to(mean.dtype), input)
    if bias is not None:
        out = out + _view(bias.to(mean.dtype), input)
    return out.to(input.dtype)


def _backward_reduce(grad_out, input, mean, invstd, weight, input_g, weight_g, bias_g):
    g, xmu = grad_out.to(mean.dtype), input.to(mean.dtype) - _view(mean, input)
    sum_dy, sum_dy_xmu = g.sum(_dims(g)), (g * xmu).sum(_dims(g))
    dtype = mean.dtype if weight is None else weight.dtype
    return sum_dy, sum_dy_xmu, (sum_dy_xmu * invstd).to(dtype), sum_dy.to(dtype)


def _backward_elemt(grad_out, input, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    total = count.sum().to(mean.dtype)
    g, xmu = grad_out.to(mean.dtype), input.to(mean.dtype) - _view(mean, input)
    scale = invstd if weight is None else invstd * weight.to(mean.dtype)
    grad = g - _view(sum_dy / total, g) - xmu * _view(invstd.square() * sum_dy_xmu / total, g)
    return (grad * _view(scale, g)).to(input.dtype)


_CPU_KERNELS = {
    "batch_norm_stats": _stats,
    "batch_norm_gather_stats_with_counts": _gather_stats_with_counts,
    "batch_norm_elemt": _elemt,
    "batch_norm_backward_reduce": _backward_reduce,
    "batch_norm_backward_elemt": _backward_elemt,
}
_library: torch.library.Library | None = None


@contextlib.contextmanager
def torch_sync_batchnorm_on_cpu() -> Iterator[None]:
    """Let ``torch.nn.SyncBatchNorm`` run on CPU tensors (see the module docstring)."""
    global _library
    if _library is None:
        _library = torch.library.Library("aten", "IMPL")
        for name, kernel in _CPU_KERNELS.items():
            _library.impl(name, kernel, "CPU")
    # The module accepts "cuda", "hpu", "xpu" and the privateuse1 backend's name.
    backend_name = torch._C._get_privateuse1_backend_name
    torch._C._get_privateuse1_backend_name = lambda: "cpu"
    try:
        yield
    finally:
        torch._C._get_privateuse1_backend_name = backend_name
