"""Benchmarks of the hand-written layers against PyTorch's (``cnnlab-bench layers|step``).

``cases``  -- the article's CIFAR net layer by layer, and a network with its loss as one module;
``layers`` -- ``layers``: forward + backward of each case, built-in vs custom;
``step``   -- ``step``: one whole training step of a model, eager and ``torch.compile``d;
``report`` -- the machine description and the results tables; ``__main__`` the command line.
How a step is timed and its memory measured lives in ``cnnlab.measure`` (shared with compare).
"""
