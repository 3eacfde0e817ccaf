"""The pruning choices shared by ``callbacks=prune`` and ``cnnlab-prune``, checked in one place.

Both read the same words (``method``, ``amount``, ``scope``, ``layers``), so a value that is
wrong in one is wrong in the other, with the same one-line message.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from cnnlab.training.errors import UserError

METHODS = ("unstructured", "structured")
SCOPES = ("layer", "global")
LAYERS = ("conv", "linear")
SCHEDULES = ("once", "gradual")


class PruneConfigError(UserError):
    """A pruning setting that cannot work; the message names the key and what it must hold."""


def check_amount(amount: Any, key: str = "amount") -> float:
    """A fraction in [0, 1): all weights pruned would leave no network."""
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise PruneConfigError(f"{key}={amount!r} is not valid: expected a fraction in [0, 1).")
    if not (math.isfinite(amount) and 0.0 <= amount < 1.0):
        raise PruneConfigError(
            f"{key}={amount!r} is out of range: expected a fraction in [0, 1), e.g. {key}=0.5."
        )
    return float(amount)


def check_choice(value: Any, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise PruneConfigError(
            f"{key}={value!r} is not known: use one of {', '.join(choices)} (e.g. "
            f"{key}={choices[0]})."
        )
    return str(value)


def check_layers(layers: Any, key: str = "layers") -> tuple[str, ...]:
    """Which layer types to prune: a non-empty list from :data:`LAYERS`."""
    if isinstance(layers, str):
        layers = [layers]
    names = tuple(layers or ())
    unknown = [name for name in names if name not in LAYERS]
    if not names or unknown:
        raise PruneConfigError(
            f"{key}={list(names)!r} is not valid: expected a non-empty list from "
            f"{list(LAYERS)}, e.g. {key}=[conv,linear]."
        )
    return names


def check_flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise PruneConfigError(f"{key}={value!r} is not valid: expected true or false.")
    return value
