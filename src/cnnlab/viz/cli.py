"""``cnnlab-viz run_dir=<run> | ckpt_path=<ckpt> [out=<dir>] [viz.gradcam=false ...]``: plots of
a run, written to ``out`` or this command's own folder (``outputs/viz/runs/<time>/``), never into
the run folder it reads. A checkpoint's stored config is checked before anything is built."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cnnlab.paths import CONF_DIR
from cnnlab.training.errors import user_message, verbose
from cnnlab.viz.render import render_run

log = logging.getLogger(__name__)


def resolve_run(run_dir: str | None, ckpt_path: str | None) -> tuple[Path, Path]:
    """(run folder whose csv log is read, what ``load_run`` should read: folder or checkpoint)."""
    if (run_dir is None) == (ckpt_path is None):
        raise ValueError(
            "give exactly one of run_dir=<run folder> or ckpt_path=<checkpoint>, e.g. "
            "`cnnlab-viz run_dir=outputs/train/runs/2024-01-01_12-00-00`."
        )
    if ckpt_path is not None:
        from cnnlab.training.builders import find_checkpoint

        ckpt = find_checkpoint(ckpt_path)  # a .ckpt file, or a run folder's, as eval takes them
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run, ckpt
    run = Path(run_dir).expanduser()
    if not (run / "checkpoints").is_dir() and not (run / "csv" / "metrics.csv").is_file():
        raise FileNotFoundError(
            f"run_dir={run} is not a cnnlab-train run folder (no checkpoints/ or csv/metrics.csv); "
            "pass a single run such as outputs/train/runs/<time> (or a sweep job folder)."
        )
    return run, run


def _drop_if_empty(folder: Path) -> None:
    """A failed command leaves no empty ``outputs/viz/runs/<time>/`` behind."""
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="viz")
def main(cfg: DictConfig) -> None:
    """Console entry point; bad paths and unusable checkpoints end in one readable line."""
    try:
        run, source = resolve_run(cfg.run_dir, cfg.ckpt_path)
        module = datamodule = None
        if (run / "checkpoints").is_dir() or source != run:
            from cnnlab.training.builders import load_run

            _, module, datamodule = load_run(source)
        else:
            log.warning("no checkpoints/ in %s: only the training curves can be drawn", run)
            cfg.viz.update(
                {name: False for name in cfg.viz if name not in ("enabled", "curves", "num_images")}
            )
        out = Path(HydraConfig.get().runtime.output_dir)  # = out=, resolved once by Hydra
        written = render_run(run, cfg.viz, module=module, datamodule=datamodule, out_dir=out)
    except Exception as err:
        message = user_message(err)
        if isinstance(err, (ValueError, FileNotFoundError)) and message is None:
            message = str(err)  # resolve_run's own messages
        if message is None or verbose():
            raise
        _drop_if_empty(Path(HydraConfig.get().runtime.output_dir))
        sys.exit(f"Error: cnnlab-viz: {message}")  # once, on stderr, as every command does
    print(f"cnnlab-viz: wrote {len(written)} file(s) to {out}")


if __name__ == "__main__":
    main()
