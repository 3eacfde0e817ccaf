"""``cnnlab-viz run_dir=<run> | ckpt_path=<ckpt> [viz.gradcam=false ...]``: plots of a run."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cnnlab.paths import CONF_DIR
from cnnlab.viz.render import render_run

log = logging.getLogger(__name__)


def resolve_run(run_dir: str | None, ckpt_path: str | None) -> tuple[Path, Path]:
    """(run folder that receives ``viz/``, what ``load_run`` should read: folder or checkpoint)."""
    if (run_dir is None) == (ckpt_path is None):
        raise ValueError(
            "give exactly one of run_dir=<run folder> or ckpt_path=<checkpoint>, e.g. "
            "`cnnlab-viz run_dir=outputs/train/runs/2024-01-01_12-00-00`."
        )
    if ckpt_path is not None:
        ckpt = Path(ckpt_path).expanduser()
        if not ckpt.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt} is not a file.")
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run, ckpt
    run = Path(run_dir).expanduser()
    if not (run / "checkpoints").is_dir() and not (run / "csv" / "metrics.csv").is_file():
        raise FileNotFoundError(
            f"run_dir={run} is not a cnnlab-train run folder (no checkpoints/ or csv/metrics.csv); "
            "pass a single run such as outputs/train/runs/<time> (or a sweep job folder)."
        )
    return run, run


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="viz")
def main(cfg: DictConfig) -> None:
    """Console entry point; bad paths and mismatched checkpoints end in one readable line."""
    try:
        run, source = resolve_run(cfg.run_dir, cfg.ckpt_path)
        module = datamodule = None
        if (run / "checkpoints").is_dir() or source != run:
            from cnnlab.training.builders import load_run

            try:
                _, module, datamodule = load_run(source)
            except RuntimeError as err:  # load_state_dict: missing / unexpected / mis-shaped keys
                raise ValueError(
                    f"the checkpoint does not fit the model its config describes: {err}"
                ) from err
        else:
            log.warning("no checkpoints/ in %s: only the training curves can be drawn", run)
            cfg.viz.update(
                {name: False for name in cfg.viz if name not in ("enabled", "curves", "num_images")}
            )
        written = render_run(run, cfg.viz, module=module, datamodule=datamodule)
    except (ValueError, FileNotFoundError) as err:
        log.error("cnnlab-viz: %s", err)
        sys.exit(f"cnnlab-viz: {err}")
    print(f"cnnlab-viz: wrote {len(written)} file(s) to {run / 'viz'}")
