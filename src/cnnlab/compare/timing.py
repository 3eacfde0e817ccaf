"""Speed and memory of one training step, per layer and in total, custom against built-in.

Times come from ``perf_counter`` on CPU and CUDA events on GPU (recorded in the stream, so
they time the kernels, not the Python that queued them). A layer's backward time runs from
the moment the gradient of its output is ready to the moment its grad_input is -- both moments
caught with tensor hooks, using the same private-clone trick as ``numerics`` (or, for the first
layer, which computes no grad_input, the moment its last parameter gradient is accumulated).

Memory is reported two ways: ``saved_MB`` counts the activations autograd keeps for backward
(via saved-tensor hooks, so it works on every device); ``peak_MB`` is the CUDA allocator's peak
above the starting point and is only available on GPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable

import torch
from torch import nn

from cnnlab.compare.twins import freeze_dropout, leaf_modules

MB = 2**20


class Clock:
    """Time stamps that are comparable on the device the work runs on."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end)
        return (end - start) * 1e3

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts bytes of distinct non-parameter storages autograd saves, per layer and in total.

    ``owner`` is set by the layer hooks while a layer runs; saves outside any layer (none in a
    plain step) only count towards the total.
    """

    def __init__(self, model: nn.Module) -> None:
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: set[int] = set()
        self.owner: str | None = None
        self.total = 0
        self.by_layer: dict[str, int] = defaultdict(int)
        super().__init__(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.params and storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.total += storage.nbytes()
            if self.owner is not None:
                self.by_layer[self.owner] += storage.nbytes()
        return tensor


def _peak_start(cuda: bool) -> int:
    if not cuda:
        return 0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak_mb(cuda: bool, start: int) -> float:
    return (torch.cuda.max_memory_allocated() - start) / MB if cuda else float("nan")


def _timed_layers(model, loss_fn, clock, marks, saved, peaks):
    """Install the hooks that time and measure every leaf layer; returns their handles."""
    calls: Counter = Counter()
    current: dict[int, tuple[str, int]] = {}

    def pre(name):
        def hook(module, args):
            calls[name] += 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            x = args[0]
            if torch.is_tensor(x) and x.requires_grad:
                x = x.clone()
                x.register_hook(lambda g: marks[key].__setitem__("bwd_end", clock.mark()))
                args = (x, *args[1:])
            saved.owner = key
            current[id(module)] = (key, _peak_start(clock.cuda))
            marks[key]["fwd_start"] = clock.mark()
            return args

        return hook

    def post(module, _args, output):
        key, start = current[id(module)]
        marks[key]["fwd_end"] = clock.mark()
        peaks[key] = _peak_mb(clock.cuda, start)
        saved.owner = None
        if output.requires_grad:
            output.register_hook(lambda g: marks[key].__setitem__("bwd_start", clock.mark()))

    def param_done(module):
        # the first layer computes no grad_input: its backward ends with its last weight grad
        return lambda _p: marks[current[id(module)][0]].__setitem__("bwd_end", clock.mark())

    handles = []
    for name, module in [*leaf_modules(model), ("loss", loss_fn)]:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post))
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                handles.append(param.register_post_accumulate_grad_hook(param_done(module)))
    return handles


def profile_layers(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """One hooked step: ``{layer: {fwd_ms, bwd_ms, saved_MB, peak_MB}}``."""
    clock = Clock(device)
    marks: dict[str, dict] = defaultdict(dict)
    peaks: dict[str, float] = {}
    saved = SavedBytes(model)
    handles = _timed_layers(model, loss_fn, clock, marks, saved, peaks)
    model.zero_grad(set_to_none=True)
    try:
        with saved, autocast():
            loss = loss_fn(model(images), labels)
        loss.backward()
        clock.sync()
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for key, m in marks.items():
        bwd = (
            clock.ms(m["bwd_start"], m["bwd_end"])
            if {"bwd_start", "bwd_end"} <= m.keys()
            else float("nan")
        )
        result[key] = {
            "fwd_ms": clock.ms(m["fwd_start"], m["fwd_end"]),
            "bwd_ms": bwd,
            "saved_MB": saved.by_layer.get(key, 0) / MB,
            "peak_MB": peaks[key],
        }
    return result


def profile_step(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> dict[str, float]:
    """One un-hooked step: ``{fwd_ms, bwd_ms, saved_MB, peak_MB}`` for the whole network + loss."""
    clock = Clock(device)
    saved = SavedBytes(model)
    model.zero_grad(set_to_none=True)
    clock.sync()
    start_mem = _peak_start(clock.cuda)
    t0 = clock.mark()
    with saved, autocast():
        loss = loss_fn(model(images), labels)
    t1 = clock.mark()
    loss.backward()
    t2 = clock.mark()
    clock.sync()
    return {
        "fwd_ms": clock.ms(t0, t1),
        "bwd_ms": clock.ms(t1, t2),
        "saved_MB": saved.total / MB,
        "peak_MB": _peak_mb(clock.cuda, start_mem),
    }


def median_profile(
    twins: dict[str, tuple[nn.Module, nn.Module]],
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Median per-layer and whole-step measurements per impl after ``warmup`` discarded steps.

    The impls alternate inside each repeat so slow drifts (thermal throttling, another process
    waking up) hit both alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    layer_runs: dict[str, list] = defaultdict(list)
    step_runs: dict[str, list] = defaultdict(list)
    for model, _ in twins.values():
        model.train()
        list(freeze_dropout(model))
    for index in range(warmup + repeats):
        for impl, (model, loss_fn) in twins.items():
            step = profile_step(model, loss_fn, images, labels, autocast, device)
            layers = profile_layers(model, loss_fn, images, labels, autocast, device)
            if index >= warmup:
                step_runs[impl].append(step)
                layer_runs[impl].append(layers)
    return (
        {impl: _median_nested(runs) for impl, runs in layer_runs.items()},
        {impl: _median(runs) for impl, runs in step_runs.items()},
    )


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def _median_nested(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {layer: _median([run[layer] for run in runs]) for layer in runs[0]}
