"""Command line: ``cnnlab-bench layers ...`` (layer by layer), ``cnnlab-bench step ...``
(one whole training step, eager and compiled), ``cnnlab-bench optim ...`` (one optimizer step,
cnnlab.optim vs torch.optim) and ``cnnlab-bench coverage ...`` (how much of a torchvision model
runs hand-written)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from cnnlab.bench import coverage
from cnnlab.bench.cases import CASES
from cnnlab.bench.layers import run_case, settings
from cnnlab.bench.loop import add_arguments as add_loop_arguments
from cnnlab.bench.loop import run as run_loop
from cnnlab.bench.optim import add_arguments as add_optim_arguments
from cnnlab.bench.optim import run as run_optim
from cnnlab.bench.report import machine_lines, table, write_markdown
from cnnlab.bench.step import (
    COMPILE_MODES,
    IMPLS,
    INPUT_SHAPE,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    StepConfig,
    run_step,
    step_table,
)
from cnnlab.machine import set_tf32
from cnnlab.models import MODELS


def _common(parser: argparse.ArgumentParser, batch: int, repeats: int, warmup: int) -> None:
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per impl (median)")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed runs per impl first")
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads for torch (default: torch's current setting)",
    )
    parser.add_argument("--markdown", type=Path, help="also write the results to this file")


def _tf32_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="CUDA fp32: allow TF32 in matmuls and convolutions alike (default: neither)",
    )


def _choices(allowed: tuple[str, ...]):
    """An argparse type for a comma-separated subset of ``allowed``, in the order given."""

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
        wrong = [item for item in items if item not in allowed]
        if wrong or not items:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give one or more of {','.join(allowed)}, separated by commas"
            )
        return items

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-bench",
        description="Time and peak memory of training steps, hand-written layers vs torch.nn.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    layers = commands.add_parser(
        "layers", help="forward + backward of every layer of the seed CNN and of the whole net"
    )
    layers.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu")
    _tf32_option(layers)
    _common(layers, batch=256, repeats=20, warmup=3)

    step = commands.add_parser(
        "step", help="one whole training step of a model, eager and torch.compile'd"
    )
    step.add_argument("--model", choices=sorted(MODELS), default="seed_cnn")
    step.add_argument("--mode", type=_choices(MODES), default=("eager",), help="e.g. eager,compile")
    step.add_argument("--impls", type=_choices(IMPLS), default=IMPLS, help="e.g. builtin,custom")
    step.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    step.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    step.add_argument("--optimizer", choices=OPTIMIZERS, default="none")
    step.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    step.add_argument(
        "--fullgraph",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="torch.compile(fullgraph=...): a graph break is an error (default) or splits the step",
    )
    _tf32_option(step)
    _common(step, batch=256, repeats=20, warmup=3)

    loop = commands.add_parser(
        "loop", help="the article's CIFAR-10 experiment as a plain PyTorch loop (no Lightning)"
    )
    add_loop_arguments(loop)
    _common(loop, batch=64, repeats=1, warmup=0)

    optim = commands.add_parser(
        "optim", help="one optimizer step over a model's parameters, cnnlab.optim vs torch.optim"
    )
    add_optim_arguments(optim)
    cover = commands.add_parser(
        "coverage",
        help="share of a torchvision model's layers and step time that run hand-written",
    )
    coverage.add_arguments(cover)
    _common(cover, batch=32, repeats=1, warmup=1)

    args = parser.parse_args(argv)
    for name in ("batch", "repeats", "threads"):
        if getattr(args, name, 1) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    return args


def _write(args: argparse.Namespace, header: list[str], result: str) -> None:
    print(result)
    if args.markdown is not None:
        write_markdown(args.markdown, header, result)
        print(f"wrote {args.markdown}")


def run_layers(args: argparse.Namespace) -> None:
    runs = settings(args.device)
    use_cuda = any(d.type == "cuda" for _, d, _ in runs)
    header = machine_lines(args.threads, use_cuda=use_cuda)
    if use_cuda:
        header.append(f"tf32 (matmul and cudnn): {set_tf32(args.tf32)}")
    header.append(
        f"method: forward + backward (no optimizer step), median of {args.repeats} interleaved "
        f"runs after {args.warmup} warm-up runs; peak = most bytes the step allocates at once"
    )
    print("\n".join(header), flush=True)
    rows = []
    for index, setting in enumerate(runs):
        for case in CASES:
            rows.append(run_case(case, setting, args.batch, args.repeats, args.warmup))
            print(f"  done: {setting[0]}, {case.name}", file=sys.stderr, flush=True)
        if index < len(runs) - 1:  # the table so far, for a run stopped before the end
            print(table(rows), flush=True)
    _write(args, header, table(rows))


def run_step_command(args: argparse.Namespace, argv: list[str]) -> None:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here; use --device cpu.")
    config = StepConfig(
        model=args.model,
        batch=args.batch,
        device=torch.device(args.device),
        precision=args.precision,
        optimizer=args.optimizer,
        compile_mode=args.compile_mode,
        fullgraph=args.fullgraph,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    header = _step_header(args, config, argv)
    if config.device.type == "cuda":
        header.append(f"tf32 (matmul and cudnn): {set_tf32(args.tf32)}")
    print("\n".join(header), flush=True)

    def so_far(results: dict) -> None:  # for a run stopped before the end
        print(step_table(results), flush=True)

    results = run_step(config, args.mode, args.impls, so_far)
    _write(args, header, step_table(results))


def _step_header(args: argparse.Namespace, config: StepConfig, argv: list[str]) -> list[str]:
    """Machine, command, what a step is and how it was measured."""
    header = machine_lines(args.threads, use_cuda=config.device.type == "cuda")
    optimizer = "" if args.optimizer == "none" else f", {args.optimizer}.step()"
    method = (
        f"method: median of {args.repeats} timed steps after {config.warmup_calls('eager')} "
        "warm-up steps, builtin and custom taking turns; warm-up s = wall time of the warm-up "
        "steps; peak = most bytes a step allocates at once"
    )
    if "compile" in args.mode:
        method += (
            f"; compiled: torch.compile(model + loss, mode={args.compile_mode}, "
            f"fullgraph={args.fullgraph}), each impl on its own after torch._dynamo.reset() with "
            f"an empty inductor cache, {config.warmup_calls('compile')} warm-up steps "
            "(compilation included)"
        )
        if config.cuda_graphs:
            method += "; CUDA graphs: compiled peak over the whole run, capture included"
    header += [
        f"command: cnnlab-bench {shlex.join(argv)}",
        f"step: {args.model}, input {args.batch}x"
        + "x".join(map(str, INPUT_SHAPE))
        + f", {args.device} {args.precision}: forward + CrossEntropyLoss, backward{optimizer}, "
        "gradients set to None",
        method,
    ]
    return header


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "layers":
        run_layers(args)
    elif args.command == "optim":
        header = machine_lines(args.threads, use_cuda=args.device == "cuda")
        header += [
            f"command: cnnlab-bench {shlex.join(argv)}",
            f"step: optimizer.step() over {args.model}'s parameters (CIFAR-10 shapes) with fixed "
            f"random gradients, {args.device} fp32; torch.optim with foreach=True; median of "
            f"{args.repeats} timed steps after {args.warmup} warm-up steps, the two taking turns "
            "(min: the fastest step of each)",
        ]
        print("\n".join(header), flush=True)
        _write(args, header, run_optim(args))
    elif args.command == "loop":
        header = [*machine_lines(args.threads, use_cuda=args.device == "cuda")]
        header.append(f"command: cnnlab-bench {shlex.join(argv)}")
        print("\n".join(header), flush=True)
        result = run_loop(args)  # prints its rows as they come
        if args.markdown is not None:
            write_markdown(args.markdown, header, result)
    elif args.command == "coverage":
        header = [*machine_lines(args.threads, use_cuda=False)]
        header += [
            f"command: cnnlab-bench {shlex.join(argv)}",
            f"model=torchvision model.impl=custom, input {args.batch}x{args.shape.replace(',', 'x')}, "
            f"train mode; step = forward + CrossEntropyLoss + backward, torch.profiler CPU time "
            f"over {args.steps} steps after 1 warm-up",
        ]
        print("\n".join(header), flush=True)
        _write(args, header, coverage.run(args))
    else:
        run_step_command(args, argv)


if __name__ == "__main__":
    main()
