"""``report.md``, ``report.csv`` (+ ``parity.csv``) and the figures of one compare run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from cnnlab.compare import parity, plots
from cnnlab.compare.numerics import ERROR_COLUMNS
from cnnlab.viz.tables import columns_of, markdown_table, write_csv

ERROR_TABLE = ("layer", "type", *ERROR_COLUMNS)
TIME_TABLE = (
    "layer",
    "type",
    "fwd_ms_custom",
    "fwd_ms_builtin",
    "fwd_ratio",
    "bwd_ms_custom",
    "bwd_ms_builtin",
    "bwd_ratio",
    "saved_MB_custom",
    "saved_MB_builtin",
    "peak_MB_custom",
    "peak_MB_builtin",
)
PARITY_TABLE = ("impl", "epoch", "train_loss", "train_acc", "val_loss", "val_acc")


def _settings_section(settings: Mapping[str, object]) -> str:
    rows = [{"setting": k, "value": v} for k, v in settings.items()]
    return markdown_table(rows, ("setting", "value"))


def _layers_section(
    rows: Sequence[dict], step: dict, out_dir: Path, caption: str, timed: str
) -> str:
    worst = {
        c: max((r[c] for r in rows if r[c] == r[c]), default=float("nan"))
        for c in ERROR_COLUMNS
        if c.endswith("_rel")
    }
    worst_text = ", ".join(f"{c} {v:.3g}" for c, v in worst.items())
    plots.plot_errors(
        rows, out_dir / "errors.png", f"Custom vs built-in: relative error per layer ({caption})"
    )
    plots.plot_timing(rows, out_dir / "timing.png", f"Time per layer ({caption}; {timed})")
    return (
        "## Numerical agreement per layer (one training step)\n\n"
        "Errors of the custom layer against the built-in one on identical weights and inputs; "
        "relative = max |custom - builtin| / max |builtin|. Dropout is frozen (eval mode): "
        "its random masks cannot match. Each network runs end to end, so a layer's output error "
        "includes what it inherited from the layers before it. Below float64, a pre-activation "
        "within round-off of zero can land on the other side of a ReLU (or a max-pool tie can "
        "flip), which moves whole gradient entries: a gradient error that is a sizeable share of the "
        "largest entry is that, not a wrong backward pass. `dtype=float64` separates the two: "
        "there every layer agrees to round-off (~1e-15).\n\n"
        f"Worst over all layers: {worst_text}.\n\n"
        + markdown_table(rows, ERROR_TABLE)
        + "\n![relative errors](errors.png)\n\n"
        f"## Speed and memory ({timed})\n\n"
        "`saved_MB`: activations kept for backward; `peak_MB`: most bytes held at once above "
        "the start (of the layer's forward, or of the whole step; `cnnlab.measure`). "
        "Ratios are custom / builtin.\n\n"
        + markdown_table([*rows, step], TIME_TABLE)
        + "\n![timing](timing.png)\n"
    )


def _parity_section(
    history: parity.ParityHistory, tol: float, out_dir: Path, caption: str, intro: str | None
) -> str:
    first, largest = parity.first_divergence(history, tol)
    parity.plot_parity(
        history, out_dir / "parity.png", f"Training parity: custom vs built-in ({caption})"
    )
    write_csv(history.epoch_rows, PARITY_TABLE, out_dir / "parity.csv")
    if first is None:
        verdict = (
            f"The training losses never differ by more than {tol:g} (relative); "
            f"largest difference {largest:.3g}."
        )
    else:
        epoch = first // history.steps_per_epoch + 1
        verdict = (
            f"The training losses first differ by more than {tol:g} (relative) at step {first + 1} "
            f"(epoch {epoch}); largest difference {largest:.3g}."
        )
    return (
        "## Training parity\n\n"
        f"{intro or 'Both impls start from the same weights and see the same batches (SGD).'}\n\n"
        f"{verdict}\n\n"
        "Final epoch:\n\n"
        + markdown_table(parity.final_rows(history), PARITY_TABLE)
        + "\n![parity](parity.png)\n"
    )


def write_report(
    out_dir: Path,
    title: str,
    settings: Mapping[str, object],
    layers: tuple[list[dict], dict] | None,
    history: parity.ParityHistory | None,
    tol: float,
    parity_intro: str | None = None,
) -> Path:
    """Write every file of the report; returns the path of ``report.md``."""
    caption = f"{settings['device']}, {settings['dtype']}"
    if settings["precision"] != "none":
        caption += f", autocast {settings['precision']}"

    sections = [f"# {title}\n", _settings_section(settings)]
    if layers is not None:
        rows, step = layers
        timed = f"median of {settings['repeats']} after {settings['warmup']} warm-up steps"
        sections.append(_layers_section(rows, step, out_dir, caption, timed))
        all_rows = [*rows, step]
        write_csv(all_rows, columns_of(all_rows), out_dir / "report.csv")
    if history is not None:
        sections.append(_parity_section(history, tol, out_dir, caption, parity_intro))
        if layers is None:
            write_csv(parity.final_rows(history), PARITY_TABLE, out_dir / "report.csv")
    path = out_dir / "report.md"
    path.write_text("\n".join(sections))
    return path
