"""``cnnlab-bench coverage``: how much of a torchvision model runs hand-written, by layers and time.

Layers: the leaf modules with compute (parameters or a kernel; views such as Flatten, Permute
and Identity excluded) of ``model=torchvision model.impl=custom``, and how many of them are
cnnlab twins. Time: one training step (forward, cross-entropy, backward) profiled on the CPU
with ``torch.profiler``; every hand-written ``autograd.Function`` of ``cnnlab.functional`` is
wrapped in a ``record_function("cnnlab::<Function>.forward|backward")`` for the run, and their
total is set against the whole step. The rest is autograd bookkeeping, the residual adds and
concatenations of the models' own forward code, and any built-in kernel that code calls
directly (e.g. ``F.adaptive_avg_pool2d`` in MobileNetV2's forward), which the table lists.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import importlib
import inspect
import pkgutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import cnnlab.functional
import cnnlab.layers as L
from cnnlab.bench.report import aligned_table
from cnnlab.layers.ops import OPS
from cnnlab.models.torchvision import NO_COMPUTE, TorchvisionModel

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "convnext_tiny")
STEP = "coverage::step"
PREFIX = "cnnlab::"
FORBIDDEN_ATEN = sorted({pattern for op in OPS for pattern in op.builtin_aten})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated torchvision model names (default: %(default)s)",
    )
    parser.add_argument(
        "--shape", default="1,8,8", help="C,H,W of the input (default: digits' %(default)s)"
    )
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 1 warm-up)")


@dataclass(frozen=True)
class Coverage:
    model: str
    handwritten_layers: int
    layers: int
    handwritten_s: float
    step_s: float
    builtin_kernels: dict[str, int]

    def row(self) -> list[str]:
        kernels = ", ".join(f"{k} x{v}" for k, v in self.builtin_kernels.items()) or "none"
        return [
            self.model,
            f"{self.handwritten_layers}/{self.layers}",
            f"{100 * self.handwritten_layers / self.layers:.1f} %",
            f"{1000 * self.step_s:.1f}",
            f"{100 * self.handwritten_s / self.step_s:.1f} %",
            kernels,
        ]


HEADER = (
    "model",
    "hand-written layers",
    "by count",
    "step ms",
    "step time in hand-written ops",
    "built-in conv/pool/norm/activation kernels run by the model's own code",
)


def count_layers(model: torch.nn.Module) -> tuple[int, int]:
    """(hand-written, all) leaf modules with compute."""
    leaves = [
        m
        for m in model.modules()
        if not list(m.children()) and not isinstance(m, NO_COMPUTE) and not _is_view(m)
    ]
    custom = sum(type(m).__module__.startswith("cnnlab.layers") for m in leaves)
    return custom, len(leaves)


def _is_view(module: torch.nn.Module) -> bool:
    return type(module) is L.Flatten


def _functions() -> list[type[torch.autograd.Function]]:
    """Every hand-written autograd Function of ``cnnlab.functional``."""
    found = set()
    for info in pkgutil.iter_modules(cnnlab.functional.__path__, "cnnlab.functional."):
        module = importlib.import_module(info.name)
        found |= {
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, torch.autograd.Function) and cls.__module__ == module.__name__
        }
    return sorted(found, key=lambda cls: cls.__name__)


@contextlib.contextmanager
def labelled_functions() -> Iterator[None]:
    """Wrap each Function's forward and backward in a profiler label, restored afterwards."""

    def labelled(fn, label: str):
        def run(ctx, *args):
            with record_function(label):
                return fn(ctx, *args)

        return staticmethod(run)

    saved = []
    for cls in _functions():
        for name in ("forward", "backward"):
            original = cls.__dict__[name]
            saved.append((cls, name, original))
            setattr(cls, name, labelled(original.__func__, f"{PREFIX}{cls.__name__}.{name}"))
    try:
        yield
    finally:
        for cls, name, original in saved:
            setattr(cls, name, original)


def measure(name: str, in_shape: tuple[int, int, int], batch: int, steps: int) -> Coverage:
    torch.manual_seed(0)
    model = TorchvisionModel("custom", in_shape, 10, name).train()
    loss_fn = L.CrossEntropyLoss()
    x = torch.randn(batch, *in_shape)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up: first-call allocations and lazy initialisation
    with labelled_functions(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            with record_function(STEP):
                step()
    totals: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for event in prof.key_averages():
        if event.key == STEP:
            totals["step"] += event.cpu_time_total
        elif event.key.startswith(PREFIX):
            totals["custom"] += event.cpu_time_total
        elif event.key.startswith("aten::"):
            op = event.key.removeprefix("aten::")
            if any(fnmatch.fnmatchcase(op, pattern) for pattern in FORBIDDEN_ATEN):
                kernels[event.key] += event.count // steps
    custom_layers, layers = count_layers(model)
    return Coverage(
        name,
        custom_layers,
        layers,
        totals["custom"] / steps / 1e6,
        totals["step"] / steps / 1e6,
        dict(sorted(kernels.items())),
    )


def run(args: argparse.Namespace) -> str:
    in_shape = tuple(int(v) for v in args.shape.split(","))
    if len(in_shape) != 3:
        raise SystemExit(f"--shape must be C,H,W, got {args.shape!r}")
    rows = []
    for name in (n.strip() for n in args.model.split(",") if n.strip()):
        result = measure(name, in_shape, args.batch, args.steps)  # type: ignore[arg-type]
        print(f"  done: {name}", flush=True)
        rows.append(result.row())
    return aligned_table(HEADER, rows, numeric={1, 2, 3, 4})
