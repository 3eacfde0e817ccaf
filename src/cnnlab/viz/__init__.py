"""Plots of a trained run: curves, confusion matrix, filters, feature maps, saliency, Grad-CAM.

``render_run`` is the single entry point, shared by ``cnnlab-viz`` and the end-of-training hook.
"""

from cnnlab.viz.render import PLOTS, render_run

__all__ = ["PLOTS", "render_run"]
