"""Training parity: train the custom and built-in twins side by side and see whether they part.

Both start from the same weights, see the same batches in the same order and reseed the global
RNG identically before each of their steps (so dropout draws the same random numbers if the
custom layer draws them the way PyTorch does). With exact arithmetic the curves would coincide;
in practice they drift apart at round-off level, and the report shows where that drift first
exceeds a tolerance.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab.viz._figure import new_figure, save


@dataclass
class ParityHistory:
    """Per-step training loss/accuracy and per-epoch validation metrics, per impl."""

    step_loss: dict[str, list[float]] = field(default_factory=dict)
    step_acc: dict[str, list[float]] = field(default_factory=dict)
    epoch_rows: list[dict] = field(default_factory=list)
    steps_per_epoch: int = 0


@torch.no_grad()
def evaluate(
    model: nn.Module, loss_fn: nn.Module, batches: Iterable, to: Callable
) -> tuple[float, float]:
    """Mean loss and accuracy over ``batches`` in eval mode."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in batches:
        images, labels = to(images, labels)
        logits = model(images)
        total_loss += loss_fn(logits, labels).item() * len(labels)
        correct += int((logits.argmax(dim=1) == labels).sum())
        count += len(labels)
    model.train()
    return total_loss / count, correct / count


def train_parity(
    twins: dict[str, tuple[nn.Module, nn.Module]],
    datamodule,
    epochs: int,
    lr: float,
    momentum: float,
    seed: int,
    to: Callable,
    autocast: Callable[[], contextlib.AbstractContextManager],
    max_batches: int | None = None,
    make_optimizer: Callable[[str, nn.Module], torch.optim.Optimizer] | None = None,
    full_batch: bool = False,
) -> ParityHistory:
    """SGD both twins for ``epochs`` epochs on the data module's train split, evaluating on val.

    ``to(images, labels)`` moves a batch to the compared device and dtype; ``max_batches`` cuts
    each epoch short (a CIFAR epoch is long on a CPU). ``make_optimizer(impl, model)`` replaces
    the SGD (``cnnlab-compare mode=optim`` gives each side its own optimizer); ``full_batch``
    accumulates the mean gradient of the epoch's batches and steps once at its end (GD).
    """
    if make_optimizer is None:

        def make_optimizer(impl: str, model: nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    optimizers = {impl: make_optimizer(impl, model) for impl, (model, _) in twins.items()}
    batches = len(datamodule.train_dataloader())
    accumulate = min(batches, max_batches or batches) if full_batch else 1
    history = ParityHistory({impl: [] for impl in twins}, {impl: [] for impl in twins})
    torch.manual_seed(seed)  # fixes the shuffling order of the train loader
    step = 0
    for epoch in range(1, epochs + 1):
        for images, labels in itertools.islice(datamodule.train_dataloader(), max_batches):
            images, labels = to(images, labels)
            for impl, (model, loss_fn) in twins.items():
                torch.manual_seed(seed + step)
                model.train()
                with autocast():
                    logits = model(images)
                    loss = loss_fn(logits, labels)
                (loss / accumulate).backward()
                if (step + 1) % accumulate == 0:
                    optimizers[impl].step()
                    optimizers[impl].zero_grad(set_to_none=True)
                history.step_loss[impl].append(loss.item())
                history.step_acc[impl].append(
                    (logits.argmax(dim=1) == labels).float().mean().item()
                )
            step += 1
        history.steps_per_epoch = step // epoch
        for impl, (model, loss_fn) in twins.items():
            val_loss, val_acc = evaluate(model, loss_fn, datamodule.val_dataloader(), to)
            n = history.steps_per_epoch
            history.epoch_rows.append(
                {
                    "epoch": epoch,
                    "impl": impl,
                    "train_loss": sum(history.step_loss[impl][-n:]) / n,
                    "train_acc": sum(history.step_acc[impl][-n:]) / n,
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                }
            )
    return history


def first_divergence(history: ParityHistory, tol: float) -> tuple[int | None, float]:
    """(first step whose losses differ by more than ``tol`` relative, largest difference seen).

    Differences are relative to ``max(1, |builtin loss|)``; a NaN loss on one side counts as
    diverged and makes the largest difference NaN.
    """
    custom, builtin = history.step_loss["custom"], history.step_loss["builtin"]
    diffs = [abs(c - b) / max(1.0, abs(b)) for c, b in zip(custom, builtin, strict=True)]
    first = next((i for i, d in enumerate(diffs) if not d <= tol), None)  # NaN counts as diverged
    largest = max(diffs, default=0.0, key=lambda d: math.inf if math.isnan(d) else d)
    return first, largest


def plot_parity(history: ParityHistory, out: Path, title: str) -> Path:
    """Loss per step (left) and accuracy per epoch (right), custom and built-in overlaid."""
    fig = new_figure(12, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    styles = {"custom": dict(color="tab:red", ls="-"), "builtin": dict(color="tab:blue", ls="--")}
    for impl, losses in history.step_loss.items():
        loss_ax.plot(
            range(1, len(losses) + 1), losses, lw=1.2, label=f"{impl} train", **styles[impl]
        )
        rows = [r for r in history.epoch_rows if r["impl"] == impl]
        epochs = [r["epoch"] for r in rows]
        loss_ax.plot(
            [e * history.steps_per_epoch for e in epochs],
            [r["val_loss"] for r in rows],
            marker="o",
            lw=0,
            label=f"{impl} val (end of epoch)",
            color=styles[impl]["color"],
        )
        acc_ax.plot(
            epochs,
            [r["train_acc"] for r in rows],
            marker="o",
            label=f"{impl} train",
            **styles[impl],
        )
        acc_ax.plot(
            epochs,
            [r["val_acc"] for r in rows],
            marker="s",
            alpha=0.6,
            label=f"{impl} val",
            **styles[impl],
        )
    loss_ax.set(title="Loss", xlabel="optimizer step", ylabel="cross-entropy loss")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save(fig, out)


def final_rows(history: ParityHistory) -> list[dict]:
    """The last epoch's metrics, one row per impl."""
    last = max(r["epoch"] for r in history.epoch_rows)
    return [r for r in history.epoch_rows if r["epoch"] == last]
