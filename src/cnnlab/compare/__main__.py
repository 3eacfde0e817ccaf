"""``python -m cnnlab.compare`` is the same as ``cnnlab-compare``."""

from cnnlab.compare.cli import main

main()
