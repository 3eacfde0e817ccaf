"""Mirror a run's PNG plots into its TensorBoard log, when the run logs to TensorBoard.

The PNGs stay the primary output (they open anywhere); TensorBoard gets the same images under
``viz/<name>`` so they sit next to the scalar curves of the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: where ``conf/logger/tensorboard.yaml`` puts the run's event files
TENSORBOARD_DIR = "tensorboard"


def add_images(run_dir: Path, pngs: Sequence[Path]) -> bool:
    """Write ``pngs`` into ``<run>/tensorboard`` if the run has one; return whether it did."""
    log_dir = Path(run_dir) / TENSORBOARD_DIR
    pngs = [p for p in pngs if p.suffix == ".png"]
    if not log_dir.is_dir() or not pngs:
        return False
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the optional `tensorboard` extra is not installed
        log.warning("viz: %s exists but tensorboard is not installed; PNGs only", log_dir)
        return False
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for png in pngs:
            image = np.asarray(Image.open(png).convert("RGB"))
            writer.add_image(f"viz/{png.stem}", image, dataformats="HWC")
    log.info("viz: added %d images to %s", len(pngs), log_dir)
    return True
