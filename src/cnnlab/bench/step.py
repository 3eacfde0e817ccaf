"""``cnnlab-bench step``: one whole training step of a model, built-in vs custom, eager and compiled.

A step is what a training loop does per batch: forward + loss in one module call (under bf16
autocast if asked), ``backward``, then the optimizer step if any, and gradients reset to ``None``.
The custom twin is ``convert(copy.deepcopy(builtin), to="custom")``: same weights, same loss.

Eager: the two impls take turns call by call (``cnnlab.measure.interleaved_timings``).
Compiled: ``torch.compile(model + loss, mode=..., fullgraph=...)``, backward and optimizer outside.
Each impl is measured on its own, after ``torch._dynamo.reset()`` and with a fresh, empty inductor
cache, so its warm-up is a first compile that neither a previous run nor the other impl has paid
for. They cannot take turns: a reset drops every compiled graph, the other impl's too.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.bench.cases import NetWithLoss
from cnnlab.bench.report import aligned_table, ratio
from cnnlab.layers import convert
from cnnlab.measure import MIB, Timing, interleaved_timings, peak_bytes, tracking_memory
from cnnlab.models import MODELS

MODES = ("eager", "compile")
IMPLS = ("builtin", "custom")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
OPTIMIZERS = ("none", "sgd", "adam")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
INPUT_SHAPE = (3, 32, 32)
CPU = torch.device("cpu")
CLASSES = 10


@dataclass(frozen=True)
class StepConfig:
    """Everything both impls share in one ``cnnlab-bench step`` run."""

    model: str = "seed_cnn"
    batch: int = 256
    device: torch.device = CPU
    precision: str = "fp32"
    optimizer: str = "none"
    compile_mode: str = "default"
    fullgraph: bool = True
    repeats: int = 20
    warmup: int = 3

    @property
    def cuda_graphs(self) -> bool:
        """``reduce-overhead`` and ``max-autotune`` replay the step as a CUDA graph on GPU."""
        return self.device.type == "cuda" and self.compile_mode != "default"

    def warmup_calls(self, mode: str) -> int:
        """Untimed first calls: CUDA graph trees run once, record on the next call, then replay."""
        if mode == "compile":
            return max(self.warmup, 3 if self.cuda_graphs else 1)
        return self.warmup


@dataclass(frozen=True)
class Measurement:
    """One impl in one mode; ``error`` (the first line) instead of numbers when it failed."""

    step_ms: float | None = None
    warmup_s: float | None = None
    peak_mib: float | None = None
    graphs: int | None = None
    error: str | None = None


def build_twins(model: str) -> dict[str, nn.Module]:
    """The model with its loss, built-in and custom, with identical weights (CIFAR-10 shapes)."""
    if model not in MODELS:
        raise ValueError(f"--model must be one of {sorted(MODELS)}, got {model!r}.")
    net = MODELS[model](impl="builtin", in_shape=INPUT_SHAPE, num_classes=CLASSES)
    builtin = NetWithLoss(net, nn.CrossEntropyLoss())
    return {"builtin": builtin, "custom": convert(copy.deepcopy(builtin), to="custom")}


def make_batch(config: StepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(config.batch, *INPUT_SHAPE, generator=generator)
    labels = torch.randint(CLASSES, (config.batch,), generator=generator)
    return images.to(config.device), labels.to(config.device)


def _optimizer(name: str, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.01, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    return None


def make_train_step(
    module: nn.Module,
    call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: tuple[torch.Tensor, torch.Tensor],
    config: StepConfig,
    mark_steps: bool = False,
) -> Callable[[], None]:
    """One training step of ``module`` through ``call`` (the module itself or its compiled form).

    ``mark_steps`` tells CUDA graph trees where each iteration begins.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(config.optimizer, params)
    dtype = PRECISIONS[config.precision]
    images, labels = batch

    def step() -> None:
        if mark_steps:
            # a new iteration: outputs of the previous replay may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(config.device.type, dtype, enabled=dtype is not None):
            loss = call(images, labels)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
        for p in params:
            p.grad = None

    return step


def measure_eager(
    twins: dict[str, nn.Module], batch: tuple[torch.Tensor, torch.Tensor], config: StepConfig
) -> dict[str, Measurement]:
    """The impls' eager steps, taking turns."""
    steps = {impl: make_train_step(m, m, batch, config) for impl, m in twins.items()}
    timings = interleaved_timings(
        steps, config.device, repeats=config.repeats, warmup=config.warmup_calls("eager")
    )
    return {
        impl: Measurement(
            step_ms=timings[impl].median_s * 1e3,
            warmup_s=timings[impl].warmup_s,
            peak_mib=peak_bytes(step, config.device) / MIB,
        )
        for impl, step in steps.items()
    }


@contextlib.contextmanager
def _fresh_compiler() -> Iterator[None]:
    """Dynamo's caches reset and an empty inductor cache dir, as a first compile sees them."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # an older torch: warm-ups may then include cache hits
        fresh_cache = contextlib.nullcontext
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        with fresh_cache():
            yield
    finally:
        torch._dynamo.reset()


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` -- enough to recognise a graph break in a table."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


def _time_compiled(step: Callable[[], None], config: StepConfig) -> tuple[Timing, int]:
    """The compiled step's timing and peak bytes.

    A CUDA-graph replay allocates nothing: its tensors live in the graph's private pool, made at
    capture. There the peak is taken over the whole run, warm-up and capture included, above the
    memory allocated before the first call (so it also holds the optimizer state).
    """

    def timed() -> Timing:
        return interleaved_timings(
            {"step": step},
            config.device,
            repeats=config.repeats,
            warmup=config.warmup_calls("compile"),
        )["step"]

    if config.cuda_graphs:
        with tracking_memory(config.device) as tracker:
            start = tracker.restart()
            timing = timed()
            return timing, tracker.peak_since(start)
    timing = timed()
    return timing, peak_bytes(step, config.device, compiled=True)


def measure_compiled(
    module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], config: StepConfig
) -> Measurement:
    """One impl's compiled step on a fresh compiler; a failure to compile becomes ``error``."""
    with _fresh_compiler():
        try:
            compiled = torch.compile(module, mode=config.compile_mode, fullgraph=config.fullgraph)
            step = make_train_step(module, compiled, batch, config, mark_steps=config.cuda_graphs)
            timing, peak = _time_compiled(step, config)
        except Exception as error:  # compile errors come in many types; report, don't crash
            return Measurement(error=first_line(error))
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    return Measurement(timing.median_s * 1e3, timing.warmup_s, peak / MIB, graphs)


def run_step(
    config: StepConfig, modes: tuple[str, ...], impls: tuple[str, ...] = IMPLS
) -> dict[str, dict[str, Measurement]]:
    """``{mode: {impl: Measurement}}`` for the requested modes and impls."""
    twins = {impl: m.to(config.device).train() for impl, m in build_twins(config.model).items()}
    twins = {impl: twins[impl] for impl in impls}
    batch = make_batch(config)
    results = {}
    for mode in modes:
        if mode == "eager":
            results[mode] = measure_eager(twins, batch, config)
        else:
            results[mode] = {impl: measure_compiled(m, batch, config) for impl, m in twins.items()}
    return results


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_table(results: dict[str, dict[str, Measurement]]) -> str:
    """One row per mode, built-in and custom side by side; ratios are custom / built-in."""
    header = (
        "mode",
        "builtin ms",
        "custom ms",
        "time ratio",
        "builtin warm-up s",
        "custom warm-up s",
        "warm-up ratio",
        "builtin MiB",
        "custom MiB",
        "mem ratio",
        "graphs b/c",
        "note",
    )
    body = []
    for mode, by_impl in results.items():
        b, c = by_impl.get("builtin", Measurement()), by_impl.get("custom", Measurement())
        graphs = "-" if mode == "eager" else f"{_number(b.graphs, 0)}/{_number(c.graphs, 0)}"
        errors = [f"{impl}: {m.error}" for impl, m in by_impl.items() if m.error]
        body.append(
            (
                mode,
                _number(b.step_ms, 2),
                _number(c.step_ms, 2),
                ratio(c.step_ms, b.step_ms),
                _number(b.warmup_s, 3),
                _number(c.warmup_s, 3),
                ratio(c.warmup_s, b.warmup_s),
                _number(b.peak_mib, 2),
                _number(c.peak_mib, 2),
                ratio(c.peak_mib, b.peak_mib),
                graphs,
                "; ".join(errors).replace("|", "\\|"),
            )
        )
    return aligned_table(header, body, numeric=range(1, len(header) - 1))
