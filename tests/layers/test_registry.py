"""The op registry (``cnnlab.layers.ops``) is the one list of hand-written ops: every layer and
functional op is in it, and the exports, ``convert``'s tables and the parity check follow it."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
import torch.nn as nn
from layer_testing import EXAMPLES, assert_twins_match

import cnnlab.functional as CF
import cnnlab.layers as L
from cnnlab.functional._utils import has_forward_alias_bug
from cnnlab.layers.convert import BUILTIN_TO_CUSTOM, CUSTOM_TO_BUILTIN
from cnnlab.layers.ops import LAYERS, OPS


def _layer_classes_defined_in_cnnlab_layers() -> set[type[nn.Module]]:
    classes = set()
    for info in pkgutil.iter_modules(L.__path__, "cnnlab.layers."):
        module = importlib.import_module(info.name)
        classes |= {
            cls
            for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, nn.Module) and cls.__module__ == module.__name__
        }
    return classes


def test_every_layer_class_is_registered() -> None:
    registered = {op.custom for op in OPS}
    missing = _layer_classes_defined_in_cnnlab_layers() - registered
    assert not missing, f"add {sorted(c.__name__ for c in missing)} to cnnlab.layers.ops.OPS"
    assert len(registered) == len(OPS), "an op is registered twice"


def test_every_functional_op_is_registered() -> None:
    claimed = {fn for op in OPS for fn in op.functional}
    missing = [name for name in CF.__all__ if getattr(CF, name) not in claimed]
    assert not missing, f"name the layer of {missing} in cnnlab.layers.ops.OPS"


def test_exports_namespace_and_convert_tables_follow_the_registry() -> None:
    exported = {name for name in L.__all__ if isinstance(getattr(L, name), type)}
    assert exported == set(LAYERS)
    builtin = L.get_namespace("builtin")
    for op in OPS:
        # Models are written once against a namespace: ``L.<Name>`` must be twins in both.
        assert getattr(L.get_namespace("custom"), op.name) is op.custom
        if op.builtin.__module__.startswith("torch.nn."):
            assert getattr(builtin, op.name) is op.builtin
        else:  # the twins of torchvision's own layers (LayerNorm2d, StochasticDepth)
            assert op.builtin.__module__.startswith("torchvision."), op.name
    assert {op.custom: op.builtin for op in OPS} == CUSTOM_TO_BUILTIN
    assert {op.builtin: op.custom for op in OPS} == BUILTIN_TO_CUSTOM


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_every_op_matches_its_builtin_twin(op, dtype: torch.dtype) -> None:
    """The registry-wide parity floor; each op's own test file goes much further."""
    assert op.name in EXAMPLES, f"add an example for {op.name} to layer_testing.EXAMPLES"
    example = EXAMPLES[op.name]
    custom, builtin = example.build(op.custom, dtype), example.build(op.builtin, dtype)
    assert_twins_match(custom, builtin, example.input(dtype))
    for name, value in builtin.state_dict().items():
        torch.testing.assert_close(custom.state_dict()[name], value, msg=name)


def _functions() -> list[type[torch.autograd.Function]]:
    """Every ``autograd.Function`` defined in a module of :mod:`cnnlab.functional`."""
    found = []
    for info in pkgutil.iter_modules(CF.__path__):
        module = importlib.import_module(f"{CF.__name__}.{info.name}")
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, torch.autograd.Function)
            and value.__module__ == module.__name__
        ]
    return found


def test_every_function_returns_fresh_outputs_when_compiled_on_torch_2_11() -> None:
    """torch 2.11 compiles a Function that returns an in-place-written tensor into zero input
    gradients (pytorch/pytorch#180642): each forward must carry ``fresh_outputs``."""
    functions = _functions()
    assert len(functions) >= 20
    missing = [f.__name__ for f in functions if not getattr(f.forward, "fresh_outputs", False)]
    assert not missing, f"decorate forward with @fresh_outputs: {missing}"
    assert has_forward_alias_bug("2.11.0+cu130") and has_forward_alias_bug("2.11.1")
    assert not has_forward_alias_bug("2.12.0") and not has_forward_alias_bug("2.14.1")
