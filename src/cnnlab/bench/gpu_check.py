"""``make gpu-check``: the GPU acceptance run in one command, its figures written into the docs.

    make gpu-check
    make gpu-check ARGS="--data ../shared/data/cifar10-jpeg.tar.gz --seeds 5"
    python -m cnnlab.bench.gpu_check --budget 540 --out /tmp/gpu-check   # a rented GPU, 9 minutes
    python -m cnnlab.bench.gpu_check --quick         # 1 seed, 2 epochs: does it all run?
    python -m cnnlab.bench.gpu_check --rehearse --data <tiny folder>   # every stage, small, on CPU

On a machine with a CUDA GPU it runs, most wanted figures first:

1. the whole-step benchmark of the article's CNN (batch 512, bf16), eager and compiled with
   CUDA graphs, custom and built-in;
2. the article's experiment as a plain PyTorch loop with the hand-written layers, compiled with
   CUDA graphs, ``--seeds`` seeds, mean ± std;
3. the quick ``gpu``-marked tests: every layer vs ``torch.nn`` on CUDA in fp32 and bf16, then
   compiled and CUDA-graph-replayed steps equal eager;
4. the plain loop with built-in layers, eager (the baseline) and with CUDA graphs;
5. the experiment through ``cnnlab-train experiment=seed_cifar10``, custom and builtin;
6. the whole-step benchmark of ResNet-20, the slow ``gpu`` tests (a 1-GPU Lightning run with
   CUDA graphs and, with 2+ GPUs, a DDP run) and the layer benchmark;

and replaces the block between ``<!-- gpu-check:start -->`` and ``<!-- gpu-check:end -->`` in
``docs/benchmarks.md`` and ``docs/results.md`` with what it measured, the card named, after
every command, so an interrupted run keeps what it finished. ``--budget`` bounds the whole run
for a GPU lent for minutes: each command may use the time left but a floor for each one after
it, and is stopped there; seeded runs and the sweep take half of that time and start no seed
they could not finish, so what does not fit is the least wanted; ``--only`` runs the rest in a
second call. ``--out`` also copies the log and both documents there, for a machine whose
checkout is thrown away. Without a GPU it says so and exits 0: there is nothing to check.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.bench.budget import Check, Task, run_tasks
from cnnlab.bench.loop import mean_std
from cnnlab.training.summary import collect_runs

REPO = Path(__file__).resolve().parents[3]
DOCS = ("benchmarks.md", "results.md")
START, END = "<!-- gpu-check:start -->", "<!-- gpu-check:end -->"
#: The commands, in the order they run (``--only`` picks some).
KEYS = (
    "step-seed",
    "loop-custom",
    "tests",
    "loop-baseline",
    "loop-builtin",
    "train",
    "step-resnet",
    "tests-slow",
    "layers",
)
#: Where the ``gpu``-marked tests live, the quick per-layer checks first: pytest runs paths in
#: the order given, and collecting only these skips importing the CPU suite.
GPU_TESTS = ("tests/layers/test_cuda.py", "tests/gpu")
#: Seconds a seeded command keeps for what its own clock does not see: the imports before it
#: starts counting, and what follows its last seed (evaluation, printing).
SEED_MARGIN_S = 20
#: Of the time a seeded command could have, what it takes: it would fill all of it.
SEEDED_SHARE = 0.5


def pytest_summary(stdout: str) -> str:
    """pytest's closing line ("12 passed, 3 skipped in 80.1s"), or for a run stopped before it,
    the outcomes of its ``-v`` lines so far."""
    outcome = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)\b.* in ")
    lines = [line.strip("= ") for line in stdout.splitlines() if outcome.search(line)]
    if lines:
        return lines[-1]
    verdicts = re.findall(r"::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", stdout)
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    done = ", ".join(f"{n} {v.lower()}" for v, n in counts.items())
    failed = re.findall(r"(\S+::\S+) (?:FAILED|ERROR)", stdout)
    return f"stopped after {done or 'no test'}" + (
        f"; failed: {', '.join(failed)}" if failed else ""
    )


def last_table(stdout: str) -> str:
    """The last run of consecutive table lines a command printed: a benchmark prints its table
    so far after each part, so a command stopped by the budget still leaves what it measured."""
    blocks = re.findall(r"(?:^\|.*\n?)+", stdout, flags=re.M)
    return blocks[-1].rstrip("\n") if blocks else ""


def lightning_runs(sweep_dir: Path) -> str:
    """mean ± std of test accuracy and wall time per impl over a ``-m`` sweep's jobs."""
    by_impl: dict[str, list[dict]] = {}
    for row in collect_runs(sweep_dir) if sweep_dir.is_dir() else []:
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


@dataclass(frozen=True)
class Sizes:
    """What the check runs on: the real thing on a GPU, a miniature of it for ``--rehearse``."""

    device: str
    precision: str
    step_modes: str
    compile_mode: str  # of the plain loop's fast runs and of the step benchmark's compiled one
    trainer: str
    seed_batch: int
    resnet_batch: int
    layer_batch: int
    step_repeats: tuple[str, ...]

    @classmethod
    def for_run(cls, rehearse: bool) -> Sizes:
        if rehearse:
            repeats = ("--repeats", "2", "--warmup", "1")
            return cls("cpu", "fp32", "eager", "none", "cpu", 8, 4, 2, repeats)
        return cls("cuda", "bf16", "eager,compile", "reduce-overhead", "gpu", 512, 128, 512, ())


def build_tasks(args: argparse.Namespace, data: str, sizes: Sizes, sweep: Path) -> list[Task]:
    """The check's commands, most wanted figures first (see the module docstring)."""
    bench = ["-m", "cnnlab.bench"]
    step = [
        "step",
        *("--device", sizes.device, "--precision", sizes.precision),
        *("--mode", sizes.step_modes, *sizes.step_repeats),
        *(("--compile-mode", sizes.compile_mode) if "compile" in sizes.step_modes else ()),
    ]
    step_caption = f"Whole step (`cnnlab-bench {' '.join(step)}`)"
    epochs, seeds = str(args.epochs), str(args.seeds)
    loop = ["loop", "--data", data, "--device", sizes.device, "--epochs", epochs]

    def loop_task(key: str, title: str, argv: list[str], share: float = 1.0) -> Task:
        """A ``cnnlab-bench loop`` command that starts no seed it could not finish in time."""
        return Task(
            key,
            title,
            lambda timeout_s: [*bench, *argv, "--max-seconds", f"{timeout_s - SEED_MARGIN_S:.0f}"],
            "results.md",
            f"Plain PyTorch loop, data on the device (`cnnlab-bench {' '.join(argv)}`):",
            share=share,
        )

    def pytest_task(key: str, title: str, marks: str) -> Task:
        # -v: a line per test as it ends, so a run stopped by the budget still tells what passed
        argv = ["-m", "pytest", "-m", marks, "-v", "-p", "no:cacheprovider", *GPU_TESTS]
        caption = f"`pytest -m '{marks}' {' '.join(GPU_TESTS)}`"
        return Task(key, title, lambda _: argv, "benchmarks.md", caption, pytest_summary)

    def step_task(key: str, name: str, model: str, batch: int) -> Task:
        argv = [*bench, *step, "--model", model, "--batch", str(batch)]
        caption = f"{step_caption}, {name}, batch {batch}, {sizes.precision}:"
        title = f"step benchmark {model}"
        return Task(key, title, lambda _: argv, "benchmarks.md", caption, last_table)

    baseline = [*loop, "--impl", "builtin", "--compile", "none", "--seeds", "1"]
    fast = (
        "CUDA graphs"
        if sizes.compile_mode == "reduce-overhead"
        else f"compile={sizes.compile_mode}"
    )
    graphs = ["--compile", sizes.compile_mode, "--seeds", seeds]
    train = [
        "-m",
        "cnnlab.train",
        "-m",
        "experiment=seed_cifar10",
        "data=imagefolder",
        f"data.root={data}",
        # seeds before impls: the sweep alternates custom and builtin, so a sweep stopped by the
        # budget still has both
        f"seed={','.join(map(str, range(args.seeds)))}",
        "model.impl=custom,builtin",
        f"trainer={sizes.trainer}",
        "viz.enabled=false",
        f"trainer.max_epochs={epochs}",
        f"hydra.sweep.dir={sweep}",
    ]
    layers = ["layers", "--device", sizes.device, "--batch", str(sizes.layer_batch)]
    return [
        step_task("step-seed", "seed CNN", "seed_cnn", sizes.seed_batch),
        loop_task(
            "loop-custom",
            f"plain loop, custom, {fast}",
            [*loop, "--impl", "custom", *graphs],
            SEEDED_SHARE,
        ),
        pytest_task("tests", "gpu tests", "gpu and not slow"),
        loop_task("loop-baseline", "plain loop, built-in eager (the baseline)", baseline),
        loop_task(
            "loop-builtin",
            f"plain loop, built-in, {fast}",
            [*loop, "--impl", "builtin", *graphs],
            SEEDED_SHARE,
        ),
        Task(
            "train",
            "cnnlab-train experiment=seed_cifar10",
            lambda _: train,
            "results.md",
            f"`cnnlab-train -m {' '.join(train[3:-1])}` ({sweep.name}):",
            lambda _: lightning_runs(sweep),
            share=SEEDED_SHARE,
        ),
        step_task("step-resnet", "ResNet-20", "resnet", sizes.resnet_batch),
        pytest_task("tests-slow", "slow gpu tests (Lightning runs)", "gpu and slow"),
        Task(
            "layers",
            "layer benchmark",
            lambda _: [*bench, *layers, *sizes.step_repeats],
            "benchmarks.md",
            f"Layers (`cnnlab-bench {' '.join(layers)}`):",
            last_table,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        default=str(REPO.parent / "shared/data/cifar10-jpeg.tar.gz"),
        help="CIFAR-10 as an ImageFolder folder or .tar.gz (default: %(default)s)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds per impl (default: 5)")
    parser.add_argument("--epochs", type=int, default=10, help="of the experiment (default: 10)")
    parser.add_argument(
        "--budget", type=float, help="seconds for the whole run (default: no limit)"
    )
    parser.add_argument("--out", type=Path, help="also copy the log and the documents here")
    parser.add_argument("--only", help=f"comma list of commands to run, of: {', '.join(KEYS)}")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs, no doc update")
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="every stage on the CPU, eager, at toy sizes, docs untouched: checks the plumbing",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.rehearse:
        print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check.")
        return 0
    if args.quick:
        args.seeds, args.epochs = 1, 2
    data = str(Path(args.data).resolve())
    if not Path(data).exists():
        print(f"gpu-check: no CIFAR-10 data at {data}; pass --data <folder or .tar.gz>")
        return 1
    card = "CPU rehearsal" if args.rehearse else torch.cuda.get_device_name()
    started = datetime.datetime.now()
    sweep = REPO / "outputs" / "gpu-check" / started.strftime("%Y-%m-%d_%H-%M-%S")
    budget = float("inf") if args.budget is None else args.budget
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    transcript = args.out / "gpu-check.log" if args.out else None
    check = Check(deadline=time.monotonic() + budget, transcript=transcript, cwd=REPO)
    heading = f"### {card} — `make gpu-check`, {started.date()}, torch {torch.__version__}"
    update_docs = not (args.quick or args.rehearse)

    def write(check: Check) -> None:
        """Both documents' blocks as they stand, into docs/ and ``--out``."""
        summary = "\n".join(check.log)
        blocks = {
            "benchmarks.md": "\n\n".join([heading, summary, *check.sections["benchmarks.md"]]),
            "results.md": "\n\n".join(
                [
                    heading,
                    f"Article's experiment, {args.epochs} epochs, batch 64, {card}.",
                    *check.sections["results.md"],
                ]
            ),
        }
        for name, block in blocks.items():
            if update_docs:
                write_block(REPO / "docs" / name, block)
            if args.out:
                target = args.out / name
                if update_docs:
                    shutil.copyfile(REPO / "docs" / name, target)
                else:
                    target.write_text(f"{START}\n{block.strip()}\n{END}\n")

    tasks = build_tasks(args, data, Sizes.for_run(args.rehearse), sweep)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(KEYS))
        if unknown:
            parser.error(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(KEYS)}")
        tasks = [task for task in tasks if task.key in wanted]
    run_tasks(tasks, check, write)
    if update_docs:
        print("\nwrote docs/benchmarks.md and docs/results.md")
    print("\n" + "\n".join(check.log))
    return 0 if check.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
