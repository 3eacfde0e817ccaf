"""Layer tests share their helpers through ``layer_testing.py`` (a plain module, importable by name).

They are re-exported here only so that older ``from conftest import ...`` lines keep working when
``tests/layers`` is run on its own; new code should import from ``layer_testing``.
"""

from layer_testing import BF16_TOL, assert_twins_match, layer_settings, run_with_grads, twins

__all__ = ["BF16_TOL", "assert_twins_match", "layer_settings", "run_with_grads", "twins"]
