"""Hand-written optimizers: the update rules of the article's training half, written out.

``GD``, ``SGD``, ``Momentum``, ``Nesterov`` (``sgd.py``), ``RMSProp`` (``rmsprop.py``), ``Adam``
and ``AdamW`` (``adam.py``) are ``torch.optim.Optimizer`` subclasses whose ``step`` is the
formula in their docstring in tensor arithmetic (``torch._foreach_*`` ops over all parameters
at once), never torch.optim's own update functions. Each takes its torch.optim namesake's
arguments and defaults and keeps the same state under the same keys, so param groups, LR
schedulers and checkpoints move between the two (``OPTIMIZERS`` pairs them).

Symbols, as in the article: θ the parameters (参数), η the learning rate (学习率, ``lr``), L the
loss (损失函数), g = ∇L(θ) its gradient (梯度); λ = ``weight_decay``, μ = ``momentum``,
τ = ``dampening``, α (RMSProp) = ``alpha``, β₁, β₂ = ``betas``, ε = ``eps``.
"""

from cnnlab.optim.adam import Adam, AdamW
from cnnlab.optim.registry import IMPLS, OPTIMIZERS, optimizer_class
from cnnlab.optim.rmsprop import RMSProp, RMSprop
from cnnlab.optim.sgd import GD, SGD, Momentum, Nesterov

__all__ = [
    "GD",
    "IMPLS",
    "OPTIMIZERS",
    "SGD",
    "Adam",
    "AdamW",
    "Momentum",
    "Nesterov",
    "RMSProp",
    "RMSprop",
    "optimizer_class",
]
