"""cnnlab: convolutional networks whose conv, pooling and linear layers are written by hand.

The package is layered so the architecture shows in the folders:

- ``cnnlab.functional`` -- the math: one ``torch.autograd.Function`` per op, forward and
  backward written out next to the formulas of the source article.
- ``cnnlab.layers``     -- ``torch.nn`` twins of those ops (same arguments, parameters,
  ``state_dict`` keys) and ``convert`` to swap a model between custom and built-in.
- ``cnnlab.models``     -- the article's CIFAR-10 CNN, LeNet-5, VGG and CIFAR ResNets.
- ``cnnlab.data``       -- LightningDataModules (digits offline default, CIFAR-10, MNIST, ...).
- ``cnnlab.training``   -- the Lightning glue: classification module, losses, callbacks.
- ``cnnlab.train`` / ``cnnlab.eval`` / ``cnnlab.compare`` / ``cnnlab.report`` /
  ``cnnlab.viz`` / ``cnnlab.bench`` -- the entry points.
"""

__version__ = "0.1.0"
