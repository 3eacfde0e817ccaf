"""``make gpu-check``: the GPU acceptance run in one command, its figures written into the docs.

    make gpu-check
    make gpu-check ARGS="--data ../shared/data/cifar10-jpeg.tar.gz --seeds 5"
    python -m cnnlab.bench.gpu_check --quick        # 1 seed, 2 epochs: does it all run?

On a machine with a CUDA GPU it runs, in order:

1. the ``gpu``-marked tests (every layer vs ``torch.nn`` on CUDA in fp32 and bf16; compiled and
   CUDA-graph-replayed steps equal eager; a 1-GPU run and, with 2+ GPUs, a DDP run);
2. the layer benchmark and the whole-step benchmark (seed CNN at batch 512 bf16, ResNet-20 at
   batch 128), eager and compiled with CUDA graphs;
3. the article's experiment as a plain PyTorch loop (built-in eager: the baseline; both
   impls compiled with CUDA graphs) and through ``cnnlab-train experiment=seed_cifar10``,
   custom and builtin, ``--seeds`` seeds each, mean ± std;

and replaces the block between ``<!-- gpu-check:start -->`` and ``<!-- gpu-check:end -->`` in
``docs/benchmarks.md`` and ``docs/results.md`` with what it measured, the card named. Without
a GPU it says so and exits 0: there is nothing to check.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from pathlib import Path

import torch

from cnnlab.bench.loop import mean_std
from cnnlab.training.summary import collect_runs

REPO = Path(__file__).resolve().parents[3]
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"


def run(title: str, argv: list[str], log: list[str]) -> tuple[bool, str]:
    """Run ``argv`` with this Python, echo its output, keep a one-line record in ``log``."""
    print(f"\n=== {title}\n$ {' '.join(argv)}", flush=True)
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True)
    output = done.stdout + done.stderr
    print(output[-20000:], flush=True)
    log.append(f"- {title}: {'ok' if done.returncode == 0 else f'FAILED (exit {done.returncode})'}")
    return done.returncode == 0, done.stdout


def table_of(stdout: str) -> str:
    """The markdown table rows a command printed."""
    return "\n".join(line for line in stdout.splitlines() if line.startswith("|"))


def lightning_runs(sweep_dir: Path) -> str:
    """mean ± std of test accuracy and wall time per impl over a ``-m`` sweep's jobs."""
    by_impl: dict[str, list[dict]] = {}
    for row in collect_runs(sweep_dir):
        impl = next(
            (o.split("=", 1)[1] for o in row["overrides"].split() if o.startswith("model.impl=")),
            "?",
        )
        by_impl.setdefault(impl, []).append(row)
    rows = ["| impl | test acc % | wall s (fit + test) | runs ok |", "| --- | --- | --- | --- |"]
    for impl, runs in sorted(by_impl.items()):
        ok = [r for r in runs if r["status"] == "ok"]
        acc = mean_std([r["test/acc"] for r in ok], 100)
        wall = mean_std([r["wall_time_s"] for r in ok])
        rows.append(f"| {impl} | {acc} | {wall} | {len(ok)}/{len(runs)} |")
    return "\n".join(rows)


def write_block(doc: Path, block: str) -> None:
    """Replace the gpu-check block of ``doc`` (appended when the markers are missing)."""
    text = doc.read_text() if doc.exists() else ""
    new = f"{START}\n{block.strip()}\n{END}"
    if START in text and END in text:
        text = re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: new, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + new + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/cifar10-jpeg.tar.gz"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, no doc update")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check.")
        return 0
    if args.quick:
        args.seeds, args.epochs = 1, 2
    card = torch.cuda.get_device_name()
    data = str(Path(args.data).resolve())
    if not Path(data).exists():
        print(f"gpu-check: no CIFAR-10 data at {data}; pass --data <folder or .tar.gz>")
        return 1
    log: list[str] = []
    bench = ["-m", "cnnlab.bench"]

    tests_ok, _ = run("gpu tests", ["-m", "pytest", "-m", "gpu", "-q", "tests"], log)
    _, layers = run(
        "layer benchmark", [*bench, "layers", "--device", "cuda", "--batch", "512"], log
    )
    steps = []
    step_args = "--device cuda --precision bf16 --mode eager,compile --compile-mode reduce-overhead"
    for model, batch in (("seed_cnn", "512"), ("resnet", "128")):
        argv_ = [*bench, "step", "--model", model, "--batch", batch, *step_args.split()]
        _, out = run(f"step benchmark {model}", argv_, log)
        steps.append(f"{model}, batch {batch}, bf16:\n\n{table_of(out)}")
    loop_args = [*bench, "loop", "--data", data, "--epochs", str(args.epochs)]
    _, baseline = run(
        "plain loop, built-in eager", [*loop_args, "--impl", "builtin", "--seeds", "1"], log
    )
    _, loops = run(
        "plain loop, CUDA graphs",
        [*loop_args, "--compile", "reduce-overhead", "--seeds", str(args.seeds)],
        log,
    )
    sweep = REPO / "outputs" / "gpu-check" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    overrides = [
        "experiment=seed_cifar10",
        "data=imagefolder",
        f"data.root={data}",
        "model.impl=custom,builtin",
        "trainer=gpu",
        "viz.enabled=false",
        f"seed={','.join(map(str, range(args.seeds)))}",
        f"trainer.max_epochs={args.epochs}",
        f"hydra.sweep.dir={sweep}",
    ]
    run("cnnlab-train experiment=seed_cifar10", ["-m", "cnnlab.train", "-m", *overrides], log)
    heading = f"### {card} — `make gpu-check`, {datetime.date.today()}, torch {torch.__version__}"
    loop_table = "\n".join([table_of(baseline), *table_of(loops).splitlines()[2:]])
    benchmarks = "\n\n".join(
        [
            heading,
            "\n".join(log),
            "Layers (`cnnlab-bench layers --device cuda --batch 512`):",
            table_of(layers),
            f"Whole step (`cnnlab-bench step {step_args}`):",
            *steps,
        ]
    )
    results = "\n\n".join(
        [
            heading,
            f"Article's experiment, {args.epochs} epochs, batch 64, bf16 autocast.",
            "Plain PyTorch loop (`cnnlab-bench loop`, data on the GPU):",
            loop_table,
            f"`cnnlab-train experiment=seed_cifar10` ({sweep.name}):",
            lightning_runs(sweep),
        ]
    )
    if not args.quick:
        write_block(REPO / "docs" / "benchmarks.md", benchmarks)
        write_block(REPO / "docs" / "results.md", results)
        print("\nwrote docs/benchmarks.md and docs/results.md")
    print("\n" + "\n".join(log))
    return 0 if tests_ok and all(line.endswith(": ok") for line in log) else 1


if __name__ == "__main__":
    raise SystemExit(main())
