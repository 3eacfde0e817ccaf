"""``cnnlab-bench optim``: one optimizer step over a model's parameters, cnnlab.optim vs
torch.optim's multi-tensor (``foreach=True``) path.

Only ``optimizer.step()`` is timed, on fixed random gradients (no forward or backward), so the
table is the cost of the update rule itself: a few elementwise passes over every weight plus
the Python that issues them. Both sides take turns call by call (``cnnlab.measure``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.bench.report import aligned_table, ratio
from cnnlab.measure import interleaved_timings
from cnnlab.models import MODELS
from cnnlab.optim import OPTIMIZERS
from cnnlab.optim.registry import Twin

INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
CPU = torch.device("cpu")
NAMES = tuple(t.name for t in OPTIMIZERS)


@dataclass(frozen=True)
class OptimRow:
    optimizer: str
    tensors: int
    parameters: int
    builtin_ms: float
    custom_ms: float
    #: fastest single step of each: the figure a busy shared machine disturbs least
    builtin_min_ms: float
    custom_min_ms: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet")
    parser.add_argument(
        "--optimizers",
        default=",".join(NAMES),
        help=f"comma-separated subset of {','.join(NAMES)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=50, help="timed steps per impl (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per impl first")
    parser.add_argument(
        "--threads", type=int, default=torch.get_num_threads(), help="CPU threads for torch"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--markdown", type=Path, help="also write the results to this file")


def parameters_with_gradients(model: str, device: torch.device) -> list[nn.Parameter]:
    """The model's parameters (CIFAR-10 shapes), each with a fixed random gradient."""
    torch.manual_seed(0)
    net = MODELS[model](impl="builtin", in_shape=INPUT_SHAPE, num_classes=CLASSES).to(device)
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def _clone(params: list[nn.Parameter]) -> list[nn.Parameter]:
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    for copy, p in zip(copies, params, strict=True):
        copy.grad = p.grad.clone()
    return copies


def make_steps(twin: Twin, params: list[nn.Parameter]) -> dict[str, Callable[[], object]]:
    """``{"builtin": step, "custom": step}``: the same rule over two copies of ``params``.

    The torch side is forced onto its ``foreach`` path: the fastest it has without fused
    kernels, and the one cnnlab.optim's ``_foreach_*`` ops mirror.
    """
    lr = {"gd": 1e-3, "sgd": 1e-3, "momentum": 1e-3, "nesterov": 1e-3}.get(twin.name, 1e-4)
    builtin = twin.builtin(_clone(params), lr=lr, foreach=True, **twin.builtin_options)
    custom = twin.custom(_clone(params), lr=lr)
    return {"builtin": builtin.step, "custom": custom.step}


def run(args: argparse.Namespace) -> str:
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    wrong = [n for n in names if n not in NAMES]
    if wrong or not names:
        raise SystemExit(f"--optimizers {args.optimizers!r}: give one or more of {','.join(NAMES)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu.")
    device = torch.device(args.device)
    params = parameters_with_gradients(args.model, device)
    twins = {t.name: t for t in OPTIMIZERS}
    rows = []
    for name in names:
        timings = interleaved_timings(
            make_steps(twins[name], params), device, args.repeats, args.warmup
        )
        rows.append(
            OptimRow(
                name,
                len(params),
                sum(p.numel() for p in params),
                timings["builtin"].median_s * 1e3,
                timings["custom"].median_s * 1e3,
                min(timings["builtin"].runs_s) * 1e3,
                min(timings["custom"].runs_s) * 1e3,
            )
        )
        print(f"  done: {name}", flush=True)
    return optim_table(rows)


def optim_table(rows: list[OptimRow]) -> str:
    header = (
        "optimizer",
        "tensors",
        "parameters",
        "torch.optim ms",
        "cnnlab.optim ms",
        "ratio",
        "min torch ms",
        "min cnnlab ms",
        "ratio of minima",
    )
    body = [
        (
            r.optimizer,
            str(r.tensors),
            f"{r.parameters:,}",
            f"{r.builtin_ms:.3f}",
            f"{r.custom_ms:.3f}",
            ratio(r.custom_ms, r.builtin_ms),
            f"{r.builtin_min_ms:.3f}",
            f"{r.custom_min_ms:.3f}",
            ratio(r.custom_min_ms, r.builtin_min_ms),
        )
        for r in rows
    ]
    return aligned_table(header, body, numeric=range(1, len(header)))
