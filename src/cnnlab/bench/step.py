"""``cnnlab-bench step``: one whole training step of a model, built-in vs custom, eager and compiled.

A step is what a training loop does per batch: forward + loss in one module call (under bf16
autocast if asked), ``backward``, then the optimizer step if any, and gradients reset to ``None``.
The custom twin is ``convert(copy.deepcopy(builtin), to="custom")``: same weights, same loss.

Eager: the two impls take turns call by call (``cnnlab.measure.interleaved_timings``).
Compiled: ``torch.compile(model + loss, mode=..., fullgraph=...)``, backward and optimizer outside.
Each impl is compiled on its own, in a fresh, empty inductor cache, so its warm-up is a first
compile that neither a previous run nor the other impl has paid for; then the compiled steps take
turns like the eager ones. Timed one after the other instead, the two medians came from different
minutes, and on a cloud VM whose speed drifts (the same step 300-500 ms within minutes) that
moved their ratio by more than the differences being measured. CUDA-graph modes are the
exception: each impl is captured and timed on its own.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from cnnlab.bench.cases import NetWithLoss
from cnnlab.bench.report import aligned_table, ratio
from cnnlab.layers import convert
from cnnlab.measure import (
    MIB,
    Clock,
    interleaved_timings,
    peak_bytes,
    tracking_memory,
)
from cnnlab.models import MODELS
from cnnlab.training.compile import replays_cuda_graphs, warmup_steps

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
        return replays_cuda_graphs(self.compile_mode, self.device.type)

    def warmup_calls(self, mode: str) -> int:
        """Untimed first calls: ``--warmup``, and at least what compiling needs."""
        if mode == "compile":
            return max(self.warmup, warmup_steps(self.cuda_graphs))
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
    """Dynamo's caches reset before and after; compiled code made inside stays usable."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        yield
    finally:
        torch._dynamo.reset()


def _fresh_inductor_cache() -> contextlib.AbstractContextManager[None]:
    """An empty inductor cache (on disk and in memory), as a first compile sees it."""
    try:
        from torch._inductor.utils import fresh_cache
    except ImportError:  # an older torch: warm-ups may then include cache hits
        return contextlib.nullcontext()
    return fresh_cache()


def first_line(error: BaseException) -> str:
    """``Type: first line of the message`` -- enough to recognise a graph break in a table."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


def _compile_and_warm_up(
    module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], config: StepConfig
) -> tuple[Measurement, Callable[[], None]]:
    """One impl's compiled step, compiled on an empty cache and warmed up, and what that cost:
    warm-up seconds, graphs, peak bytes.

    A CUDA-graph replay allocates nothing: its tensors live in the graph's private pool, made at
    capture, during warm-up. There the peak is taken over the warm-up, above the memory allocated
    before the first call (so it also holds the optimizer state).
    """
    counters = torch._dynamo.utils.counters["stats"]
    graphs_before = counters["unique_graphs"]
    compiled = torch.compile(module, mode=config.compile_mode, fullgraph=config.fullgraph)
    step = make_train_step(module, compiled, batch, config, mark_steps=config.cuda_graphs)
    clock, calls = Clock(config.device), config.warmup_calls("compile")
    with _fresh_inductor_cache():
        if config.cuda_graphs:
            with tracking_memory(config.device) as tracker:
                start = tracker.restart()
                warmup_s = sum(clock.wall_seconds(step) for _ in range(calls))
                peak = tracker.peak_since(start)
        else:
            warmup_s = sum(clock.wall_seconds(step) for _ in range(calls))
            peak = peak_bytes(step, config.device, compiled=True)
    graphs = counters["unique_graphs"] - graphs_before
    return Measurement(warmup_s=warmup_s, peak_mib=peak / MIB, graphs=graphs), step


def measure_compiled(
    twins: dict[str, nn.Module], batch: tuple[torch.Tensor, torch.Tensor], config: StepConfig
) -> dict[str, Measurement]:
    """Each impl's compiled step; a failure to compile becomes that impl's ``error``."""
    results: dict[str, Measurement] = {}
    steps: dict[str, Callable[[], None]] = {}
    with _fresh_compiler():
        for impl, module in twins.items():
            try:
                results[impl], steps[impl] = _compile_and_warm_up(module, batch, config)
            except Exception as error:  # compile errors come in many types; report, don't crash
                results[impl] = Measurement(error=first_line(error))
        groups = [{impl: step} for impl, step in steps.items()] if config.cuda_graphs else [steps]
        for group in groups:
            try:
                timings = interleaved_timings(
                    group, config.device, repeats=config.repeats, warmup=0
                )
            except Exception as error:
                results.update({impl: Measurement(error=first_line(error)) for impl in group})
                continue
            for impl, timing in timings.items():
                results[impl] = replace(results[impl], step_ms=timing.median_s * 1e3)
    return results


def run_step(
    config: StepConfig,
    modes: tuple[str, ...],
    impls: tuple[str, ...] = IMPLS,
    so_far: Callable[[dict[str, dict[str, Measurement]]], None] | None = None,
) -> dict[str, dict[str, Measurement]]:
    """``{mode: {impl: Measurement}}`` for the requested modes and impls; ``so_far`` is handed
    the results after each mode but the last."""
    twins = {impl: m.to(config.device).train() for impl, m in build_twins(config.model).items()}
    twins = {impl: twins[impl] for impl in impls}
    batch = make_batch(config)
    results = {}
    for mode in modes:
        if mode == "eager":
            results[mode] = measure_eager(twins, batch, config)
        else:
            results[mode] = measure_compiled(twins, batch, config)
        if so_far is not None and mode != modes[-1]:
            so_far(results)
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
