"""Benchmarks of the hand-written layers against PyTorch's (``python -m cnnlab.bench layers``).

``cases``   -- what is measured: the article's CIFAR net layer by layer, and the whole net;
``measure`` -- how: interleaved wall-clock medians and peak memory of one forward + backward;
``report``  -- the machine description and the results table;
``layers``  -- the run itself; ``__main__`` the command line.
"""
