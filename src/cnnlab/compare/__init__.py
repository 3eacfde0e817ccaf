"""``cnnlab-compare``: the hand-written layers against PyTorch's, on the same weights and batches.

Per layer it reports how far forward outputs and gradients differ and how fast and memory-hungry
each implementation is; in parity mode it trains both side by side and shows where they part.
"""

from cnnlab.compare.cli import main

__all__ = ["main"]
