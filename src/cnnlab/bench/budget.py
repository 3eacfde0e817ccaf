"""Run a list of commands within a time budget, most wanted first, keeping what each printed.

:mod:`cnnlab.bench.gpu_check` uses it to fit its acceptance run to a GPU lent for minutes: each
command may use the time left but a floor for each one after it, and is stopped there with its
process group; its output is streamed into a log as it comes, so a machine taken away
mid-command still leaves it. A command that would fill whatever time it is given (a seeded
loop starts seeds until its limit, a sweep starts jobs) takes a ``share`` of it instead, so the
commands after it get more than their floor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds of the budget kept for each command still to come.
FLOOR_S = 30


@dataclass
class Task:
    """One command of the check: ``argv(timeout_s)`` for ``python`` and the document
    (``benchmarks.md`` or ``results.md``) its figures go into."""

    key: str  # what --only names it by
    title: str
    argv: Callable[[float], list[str]]
    doc: str
    caption: str
    figures: Callable[[str], str] = lambda stdout: table_of(stdout)
    #: Of the time left but the floors of later commands, how much this one may use.
    share: float = 1.0


@dataclass
class Check:
    """The run's clock, log and figures so far."""

    deadline: float
    transcript: Path | None = None  # every command's output, appended
    cwd: Path | None = None  # where the commands run
    log: list[str] = field(default_factory=list)
    sections: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    ok: bool = True


def table_of(stdout: str) -> str:
    """The markdown table rows a command printed."""
    return "\n".join(line for line in stdout.splitlines() if line.startswith("|"))


def run(
    title: str,
    argv: list[str],
    timeout_s: float,
    transcript: Path | None = None,
    cwd: Path | None = None,
) -> tuple[str, str]:
    """Run ``python argv`` in its own process group, stopped after ``timeout_s``.

    Returns (status, output: stdout and stderr together). The output is echoed and appended to
    ``transcript`` line by line as it comes, so a machine taken away mid-command still has it,
    and a stopped command's children (a sweep's jobs, data-loader workers) are stopped with it.
    """
    header = f"\n=== {title} (at most {timeout_s:.0f} s)\n$ python {' '.join(argv)}\n"
    log = transcript.open("a") if transcript is not None else None
    lines: list[str] = []

    def echo(text: str) -> None:
        print(text, end="", flush=True)
        if log is not None:
            log.write(text)
            log.flush()

    echo(header)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            echo(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        process.wait(timeout=max(1.0, timeout_s))
        status = "ok" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended between the two calls
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        status = f"stopped at its {timeout_s:.0f} s of the budget"
    reader.join(timeout=10)
    if log is not None:
        log.close()
    return f"{status}, {time.monotonic() - started:.0f} s", "".join(lines)


def run_tasks(
    tasks: list[Task], check: Check, write: Callable[[Check], None], floor_s: float = FLOOR_S
) -> None:
    """Each task in turn, keeping ``floor_s`` of the budget for each one after it and giving it
    its ``share`` of the rest; figures written after each."""
    for index, task in enumerate(tasks):
        spare = check.deadline - time.monotonic() - floor_s * (len(tasks) - index - 1)
        timeout_s = spare * task.share
        if timeout_s < floor_s / 2:  # less than half what was kept for it: not worth a start
            check.log.append(f"- {task.title}: skipped (no time left in the budget)")
            check.ok = False
            continue
        argv = task.argv(timeout_s)
        status, stdout = run(task.title, argv, timeout_s, check.transcript, check.cwd)
        check.ok &= status.startswith("ok")
        check.log.append(f"- {task.title}: {status}")
        figures = task.figures(stdout)
        check.sections[task.doc].append(f"{task.caption}\n\n{figures or '(no figures)'}")
        write(check)
