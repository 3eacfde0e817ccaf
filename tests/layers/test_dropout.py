"""Hand-written dropout against ``torch.nn.Dropout``: masks, scaling, eval, edge cases, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import assert_twins_match, layer_settings, run_with_grads, twins

import cnnlab.functional as CF
import cnnlab.layers as L


def seeded(module: nn.Module, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return module(x)


@layer_settings
@given(
    p=st.floats(0.0, 1.0),
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_same_seed_same_mask_and_gradients_as_torch(p: float, shape, dtype) -> None:
    """The mask is drawn exactly as ATen draws it on CPU, so seeded runs are identical."""
    custom, builtin = twins(L.Dropout, nn.Dropout, p)
    x = torch.randn(shape, dtype=dtype)
    torch.manual_seed(3)
    out_c = custom(leaf_c := x.clone().requires_grad_())
    torch.manual_seed(3)
    out_b = builtin(leaf_b := x.clone().requires_grad_())
    torch.testing.assert_close(out_c, out_b, rtol=0, atol=0)
    grad = torch.randn(shape, dtype=dtype)
    if out_c.requires_grad:
        out_c.backward(grad)
        out_b.backward(grad)
        torch.testing.assert_close(leaf_c.grad, leaf_b.grad, rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mask_statistics_and_scaling(p: float) -> None:
    x = torch.ones(200_000, requires_grad=True)
    out = CF.dropout(x, p)
    kept = out != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.01
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    out.backward(torch.full_like(out, 2.0))
    torch.testing.assert_close(x.grad, 2 * out.detach())  # backward reuses the forward mask


def test_eval_and_p0_are_identity_p1_zeroes() -> None:
    x = torch.randn(4, 5)
    assert CF.dropout(x, 0.5, training=False) is x
    assert L.Dropout(0.5).eval()(x) is x
    assert CF.dropout(x, 0.0) is x
    leaf = x.clone().requires_grad_()
    out = CF.dropout(leaf, 1.0)
    assert torch.equal(out, torch.zeros_like(x))
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.zeros_like(x))


def test_inplace_overwrites_input_like_torch() -> None:
    x = torch.randn(8, 8)
    base_c, base_b = x.clone().requires_grad_(), x.clone().requires_grad_()
    hidden_c, hidden_b = base_c * 1, base_b * 1
    out_c = seeded(L.Dropout(0.4, inplace=True), hidden_c)
    out_b = seeded(nn.Dropout(0.4, inplace=True), hidden_b)
    assert out_c.data_ptr() == hidden_c.data_ptr()
    torch.testing.assert_close(out_c, out_b)
    out_c.sum().backward()
    out_b.sum().backward()
    torch.testing.assert_close(base_c.grad, base_b.grad)


def test_saves_a_bool_mask_only() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(6, 7, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        CF.dropout(x, 0.3)
    assert [(t.dtype, t.shape) for t in saved] == [(torch.bool, (6, 7))]


def test_cpu_bf16_autocast_dtype_matches_builtin() -> None:
    custom, builtin = twins(L.Dropout, nn.Dropout, 0.3)
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        ours = custom(x)
        torch.manual_seed(0)
        theirs = builtin(x)
    assert ours.dtype == theirs.dtype
    torch.testing.assert_close(ours, theirs)


def test_drop_in_repr_and_state_dict() -> None:
    custom, builtin = twins(L.Dropout, nn.Dropout, 0.25, inplace=True)
    assert repr(custom) == repr(builtin) and isinstance(custom, nn.Dropout)
    assert custom.state_dict().keys() == builtin.state_dict().keys()
    assert_twins_match(custom.eval(), builtin.eval(), torch.randn(3, 4))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability_is_rejected(p: float) -> None:
    with pytest.raises(ValueError, match=f"between 0 and 1, but got {p}"):
        CF.dropout(torch.randn(3), p)


# -- stochastic depth (torchvision.ops.StochasticDepth) -------------------------------------------
@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("train", [True, False])
def test_stochastic_depth_draws_torchvisions_masks(mode: str, p: float, train: bool) -> None:
    from torchvision.ops import StochasticDepth

    custom, builtin = twins(L.StochasticDepth, StochasticDepth, p, mode, dtype=torch.float64)
    assert repr(custom) == repr(builtin)
    custom.train(train), builtin.train(train)
    x = torch.randn(16, 3, 2, 2, dtype=torch.float64)
    upstream = torch.randn_like(x)
    kept = set()
    for seed in range(6):  # batch mode drops all or nothing: several draws see both
        results = []
        for module in (custom, builtin):
            torch.manual_seed(seed)
            results.append(run_with_grads(module, x, lambda out: upstream))
        (out_c, grads_c), (out_b, grads_b) = results
        torch.testing.assert_close(out_c, out_b, rtol=0, atol=0)
        torch.testing.assert_close(grads_c["input"], grads_b["input"], rtol=0, atol=0)
        kept.add(bool(out_c.ne(0).any()))
    assert kept == ({True, False} if train and 0 < p < 1 and mode == "batch" else kept)


def test_stochastic_depth_gradcheck() -> None:
    x = torch.randn(8, 3, dtype=torch.float64, requires_grad=True)

    def op(t: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same mask at every evaluation
        return CF.stochastic_depth(t, 0.5, "row")

    assert torch.autograd.gradcheck(op, (x,))
