"""``cnnlab-bench loop``: the article's experiment as a plain PyTorch loop, no Lightning.

    cnnlab-bench loop --data ../shared/data/cifar10-jpeg.tar.gz --impl builtin --compile none
    cnnlab-bench loop --data ../shared/data/cifar10-jpeg.tar.gz --impl custom --compile reduce-overhead --seeds 5

The seed CNN, Adam 1e-3, batch 64, 10 epochs, inputs in [0, 1], on the same 45,000-image train
split that ``cnnlab-train experiment=seed_cifar10 data=imagefolder`` uses. The whole data set
sits on the device and batches are gathered there, so the loop measures the network and its
layers, not a data loader. It is both the baseline that Lightning runs are timed against and
the fastest way to train with the hand-written layers (``--compile reduce-overhead``: forward,
loss and backward replayed as CUDA graphs).

Only full batches are trained on (703 a epoch; the 8 images left over change with each epoch's
shuffle): a compiled step that met one ragged batch would compile a second, dynamic-shape graph,
and dynamo would then serve every later step from it. Each seed prints its own row as it ends,
so a run stopped by a time limit keeps the seeds it finished.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch

from cnnlab.data import ImageFolderDataModule
from cnnlab.layers import get_namespace
from cnnlab.models import SeedCNN
from cnnlab.training.compile import MODES, replays_cuda_graphs, warmup_steps


@dataclass(frozen=True)
class LoopResult:
    seed: int
    train_s: float  # wall time of all epochs, compilation included
    warmup_s: float  # the first steps: compilation, CUDA-graph warm-up and recording
    test_acc: float

    @property
    def steady_s(self) -> float:
        """Training time once compiled (and captured): the rest of the steps."""
        return self.train_s - self.warmup_s


def load_split(datamodule: ImageFolderDataModule, split: str, device: torch.device):
    """The whole split as (images, labels) on ``device``, transformed as the data module does."""
    dataset = datamodule.dataset(split)
    images, labels = dataset.__getitems__(range(len(dataset)))
    return images.to(device), labels.to(device)


def train_once(
    data: dict[str, tuple[torch.Tensor, torch.Tensor]],
    impl: str,
    compile_mode: str | None,
    seed: int,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
) -> LoopResult:
    """One seeded run; returns its timings and test accuracy."""
    images, labels = data["train"]
    device = images.device
    torch.manual_seed(seed)
    model = SeedCNN(impl=impl, in_shape=tuple(images.shape[1:])).to(device)
    criterion = get_namespace(impl).CrossEntropyLoss()
    # fused Adam on a GPU for both impls: the optimizer is not what is being compared
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type == "cuda")
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast:
            return criterion(model(x), y)

    step_fn = forward_loss
    if compile_mode is not None:
        # each seed compiles afresh, like a new run; dynamo would otherwise keep every seed's
        # graphs on forward_loss's code, and past its recompile limit fullgraph=True fails
        torch._dynamo.reset()
        step_fn = torch.compile(forward_loss, mode=compile_mode, fullgraph=True)
    cudagraphs = replays_cuda_graphs(compile_mode, device.type)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    started = time.perf_counter()
    warmup_s, steps, warm = 0.0, 0, warmup_steps(cudagraphs)
    generator = torch.Generator(device=device).manual_seed(seed)
    full = len(labels) - len(labels) % batch_size
    for _epoch in range(epochs):
        order = torch.randperm(len(labels), device=device, generator=generator)
        for start in range(0, full, batch_size):
            index = order[start : start + batch_size]
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            loss = step_fn(images[index], labels[index])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if steps == warm:
                sync()
                warmup_s = time.perf_counter() - started
    sync()
    train_s = time.perf_counter() - started
    return LoopResult(seed, train_s, warmup_s, evaluate(model, *data["test"]))


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = 0
    with torch.autocast(images.device.type, torch.bfloat16, enabled=images.is_cuda):
        for start in range(0, len(labels), 1000):
            logits = model(images[start : start + 1000])
            correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(labels)


def mean_std(values: list[float], scale: float = 1.0) -> str:
    """``mean ± sample std`` of ``values`` (times ``scale``), one decimal; n/a when empty."""
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.1f} ± {std * scale:.1f}"


def summary_line(label: str, results: list[LoopResult]) -> str:
    """``label``: train s, warm-up s, train s after warm-up and test acc %, each mean ± std over
    ``results``, and their number, as a table row."""
    return (
        f"| {label} | {mean_std([r.train_s for r in results])} | "
        f"{mean_std([r.warmup_s for r in results])} | "
        f"{mean_std([r.steady_s for r in results])} | "
        f"{mean_std([r.test_acc for r in results], 100)} | {len(results)} |"
    )


def table_header(epochs: int) -> str:
    return (
        f"| loop | train s ({epochs} epochs) | warm-up s | train s after warm-up | test acc % "
        "| seeds |\n| --- | --- | --- | --- | --- | --- |"
    )


def _time_for_another(done: list[LoopResult], started: float, limit: float | None) -> bool:
    """Whether one more seed, taking as long as the slowest so far, ends within ``limit``."""
    if limit is None:
        return True
    return time.perf_counter() - started + max(r.train_s for r in done) <= limit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CIFAR-10 ImageFolder folder or .tar.gz")
    parser.add_argument("--impl", default="builtin,custom", help="comma list: builtin,custom")
    parser.add_argument("--compile", default="none", help=f"comma list of none|{'|'.join(MODES)}")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="start no seed that would end past this many seconds (data loading counted)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default="data", help="where an archive is extracted")


def run(args: argparse.Namespace) -> str:
    """Every (impl, compile mode) for ``--seeds`` seeds; prints and returns a markdown table."""
    started = time.perf_counter()
    device = torch.device(args.device)
    datamodule = ImageFolderDataModule(
        root=args.data, data_dir=args.data_dir, batch_size=args.batch, normalize=False
    )
    data = {split: load_split(datamodule, split, device) for split in ("train", "test")}
    rows = [table_header(args.epochs)]
    print(rows[0], flush=True)
    for impl in args.impl.split(","):
        for mode in args.compile.split(","):
            compile_mode = None if mode == "none" else mode
            results: list[LoopResult] = []
            label = f"{impl}, compile={mode}"
            for seed in range(args.seeds):
                if results and not _time_for_another(results, started, args.max_seconds):
                    break
                results.append(train_once(data, impl, compile_mode, seed, args.epochs, args.batch))
                if args.seeds > 1:
                    print(summary_line(f"{label}, seed {seed}", results[-1:]), flush=True)
            rows.append(summary_line(label, results))
            print(rows[-1], flush=True)
    return "\n".join(rows)
