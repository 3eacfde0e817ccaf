"""Speed and memory of one training step, per layer and in total, custom against built-in.

The clock and the memory meters are ``cnnlab.measure``'s, the ones ``cnnlab-bench`` uses. A
layer's backward time runs from the moment the gradient of its output is ready to the moment its
grad_input is -- both moments caught with tensor hooks, using the same private-clone trick as
``numerics`` (or, for the first layer, which computes no grad_input, the moment its last
parameter gradient is accumulated).

Memory comes from separate, untimed steps (on CPU the meter slows every op down): ``saved_MB``
counts the activations autograd keeps for backward; ``peak_MB`` is the most bytes held at once
above the start -- of the whole step, or of a layer's forward pass.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable

import torch
from torch import nn

from cnnlab.compare.twins import freeze_dropout, leaf_modules
from cnnlab.measure import MIB, Clock, SavedBytes, tracking_memory

Autocast = Callable[[], contextlib.AbstractContextManager]
Moment = Callable[[str, str], None]


def _hook_layers(model: nn.Module, loss_fn: nn.Module, moment: Moment) -> list:
    """Call ``moment(layer, what)`` at every leaf layer's ``fwd_start``, ``fwd_end``,
    ``bwd_start`` and ``bwd_end``; returns the hook handles. A layer called twice is
    ``name#2`` the second time."""
    calls: Counter = Counter()
    current: dict[int, str] = {}

    def pre(name):
        def hook(module, args):
            calls[name] += 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            current[id(module)] = key
            x = args[0]
            if torch.is_tensor(x) and x.requires_grad:
                x = x.clone()
                x.register_hook(lambda g: moment(key, "bwd_end"))
                args = (x, *args[1:])
            moment(key, "fwd_start")
            return args

        return hook

    def post(module, _args, output):
        key = current[id(module)]
        moment(key, "fwd_end")
        if output.requires_grad:
            output.register_hook(lambda g: moment(key, "bwd_start"))

    def param_done(module):
        # the first layer computes no grad_input: its backward ends with its last weight grad
        return lambda _p: moment(current[id(module)], "bwd_end")

    handles = []
    for name, module in [*leaf_modules(model), ("loss", loss_fn)]:
        handles.append(module.register_forward_pre_hook(pre(name)))
        handles.append(module.register_forward_hook(post))
        for param in module.parameters(recurse=False):
            if param.requires_grad:
                handles.append(param.register_post_accumulate_grad_hook(param_done(module)))
    return handles


def _hooked_step(model, loss_fn, images, labels, autocast: Autocast, moment: Moment, saved=None):
    handles = _hook_layers(model, loss_fn, moment)
    model.zero_grad(set_to_none=True)
    try:
        with saved or contextlib.nullcontext(), autocast():
            loss = loss_fn(model(images), labels)
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()


def profile_layers(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Autocast,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """One hooked step: ``{layer: {fwd_ms, bwd_ms}}``."""
    clock = Clock(device)
    marks: dict[str, dict] = defaultdict(dict)
    _hooked_step(
        model, loss_fn, images, labels, autocast, lambda k, w: marks[k].__setitem__(w, clock.mark())
    )
    clock.sync()
    result = {}
    for key, m in marks.items():
        has_bwd = {"bwd_start", "bwd_end"} <= m.keys()
        result[key] = {
            "fwd_ms": clock.ms(m["fwd_start"], m["fwd_end"]),
            "bwd_ms": clock.ms(m["bwd_start"], m["bwd_end"]) if has_bwd else float("nan"),
        }
    return result


def layer_memory(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Autocast,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    """One hooked, untimed step: ``{layer: {saved_MB, peak_MB}}`` of each layer's forward."""
    saved = SavedBytes(model)
    starts: dict[str, int] = {}
    peaks: dict[str, float] = {}
    with tracking_memory(device) as tracker:

        def moment(key: str, what: str) -> None:
            if what == "fwd_start":
                saved.owner = key
                starts[key] = tracker.restart()
            elif what == "fwd_end":
                peaks[key] = tracker.peak_since(starts[key]) / MIB
                saved.owner = None

        _hooked_step(model, loss_fn, images, labels, autocast, moment, saved)
    return {
        key: {"saved_MB": saved.by_owner.get(key, 0) / MIB, "peak_MB": peak}
        for key, peak in peaks.items()
    }


def profile_step(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Autocast,
    device: torch.device,
) -> dict[str, float]:
    """One un-hooked step: ``{fwd_ms, bwd_ms}`` for the whole network + loss."""
    clock = Clock(device)
    model.zero_grad(set_to_none=True)
    clock.sync()
    t0 = clock.mark()
    with autocast():
        loss = loss_fn(model(images), labels)
    t1 = clock.mark()
    loss.backward()
    t2 = clock.mark()
    clock.sync()
    return {"fwd_ms": clock.ms(t0, t1), "bwd_ms": clock.ms(t1, t2)}


def step_memory(
    model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Autocast,
    device: torch.device,
) -> dict[str, float]:
    """One un-hooked, untimed step: ``{saved_MB, peak_MB}`` for the whole network + loss."""
    saved = SavedBytes(model)
    model.zero_grad(set_to_none=True)
    with tracking_memory(device) as tracker:
        start = tracker.restart()
        with saved, autocast():
            loss = loss_fn(model(images), labels)
        loss.backward()
        peak = tracker.peak_since(start)
    return {"saved_MB": saved.total / MIB, "peak_MB": peak / MIB}


def median_profile(
    twins: dict[str, tuple[nn.Module, nn.Module]],
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast: Autocast,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Per-layer and whole-step ``{fwd_ms, bwd_ms, saved_MB, peak_MB}`` per impl.

    Times are medians of ``repeats`` steps after ``warmup`` discarded ones, the impls alternating
    inside each repeat so slow drifts (thermal throttling, another process waking up) hit both
    alike. Memory is deterministic: one untimed step per impl after the timed ones.
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
    layer_results, step_results = {}, {}
    for impl, (model, loss_fn) in twins.items():
        args = (model, loss_fn, images, labels, autocast, device)
        memory = layer_memory(*args)
        times = _median_nested(layer_runs[impl])
        layer_results[impl] = {layer: {**t, **memory[layer]} for layer, t in times.items()}
        step_results[impl] = {**_median(step_runs[impl]), **step_memory(*args)}
    return layer_results, step_results


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(run[k] for run in runs) for k in runs[0]}


def _median_nested(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {layer: _median([run[layer] for run in runs]) for layer in runs[0]}
