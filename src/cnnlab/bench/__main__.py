"""Command line: ``python -m cnnlab.bench layers [--device cpu|cuda|all] [--batch 256] ...``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cnnlab.bench.cases import CASES
from cnnlab.bench.layers import run_case, settings
from cnnlab.bench.report import machine_lines, table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="cnnlab-bench",
        description="Time and peak memory of one forward + backward pass, hand-written layers "
        "vs torch.nn, at the article's CIFAR-10 shapes.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    layers = commands.add_parser("layers", help="every layer of the seed CNN and the whole net")
    layers.add_argument("--device", choices=("cpu", "cuda", "all"), default="cpu")
    layers.add_argument("--batch", type=int, default=256)
    layers.add_argument("--repeats", type=int, default=20, help="timed runs per impl (median)")
    layers.add_argument("--warmup", type=int, default=3, help="untimed runs per impl first")
    layers.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads for torch (default: torch's current setting)",
    )
    layers.add_argument("--markdown", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    for name in ("batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = settings(args.device)
    header = machine_lines(args.threads, use_cuda=any(d.type == "cuda" for _, d, _ in runs))
    header.append(
        f"method: forward + backward (no optimizer step), median of {args.repeats} interleaved "
        f"runs after {args.warmup} warm-up runs; peak = most bytes the step allocates at once"
    )
    print("\n".join(header), flush=True)

    rows = []
    for setting in runs:
        for case in CASES:
            rows.append(run_case(case, setting, args.batch, args.repeats, args.warmup))
            print(f"  done: {setting[0]}, {case.name}", file=sys.stderr, flush=True)
    result = table(rows)
    print(result)
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        lines = "\n".join(f"- {line}" for line in header)
        args.markdown.write_text(f"{lines}\n\n{result}\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
