"""Hand-written cross-entropy, NLL and MSE losses against ``torch.nn``."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from layer_testing import BF16_TOL, layer_settings

import cnnlab.functional as CF
import cnnlab.layers as L

REDUCTIONS = ("none", "mean", "sum")


def class_batch(
    shape: tuple[int, ...], dtype=torch.float64, seed: int = 0, ignore: int | None = None
):
    """Logits of ``shape`` (C in dim 1, or dim 0 when unbatched) and matching class indices."""
    gen = torch.Generator().manual_seed(seed)
    classes = shape[1] if len(shape) > 1 else shape[0]
    target_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    target = torch.randint(0, classes, target_shape, generator=gen)
    if ignore is not None:
        target = target.masked_fill(torch.rand(target_shape, generator=gen) < 0.3, ignore)
    return torch.randn(shape, dtype=dtype, generator=gen), target


def compare(ours_fn, theirs_fn, *inputs: torch.Tensor, **tol: float) -> None:
    """Same value, dtype and gradients (for every input that requires grad)."""
    ours, theirs = ours_fn(*inputs), theirs_fn(*inputs)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, equal_nan=True, **tol)
    leaves = [t for t in inputs if t.requires_grad]
    grad = torch.randn(theirs.shape, dtype=theirs.dtype)
    for g_ours, g_theirs in zip(
        torch.autograd.grad(ours, leaves, grad),
        torch.autograd.grad(theirs, leaves, grad),
        strict=True,
    ):
        torch.testing.assert_close(g_ours, g_theirs, equal_nan=True, **tol)


# --- gradcheck over the option grid ----------------------------------------------------------

CE_GRID = list(itertools.product(REDUCTIONS, [0.0, 0.3], [False, True], [-100, 1]))


@pytest.mark.parametrize(("reduction", "smoothing", "weighted", "ignore"), CE_GRID, ids=str)
def test_cross_entropy_gradcheck(reduction, smoothing, weighted, ignore) -> None:
    x, target = class_batch((5, 4), ignore=ignore)
    weight = torch.rand(4, dtype=torch.float64) + 0.5 if weighted else None

    def fn(t):
        return CF.cross_entropy(t, target, weight, None, ignore, None, reduction, smoothing)

    assert torch.autograd.gradcheck(fn, (x.requires_grad_(),))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probability_targets_gradcheck(reduction: str) -> None:
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    target = torch.softmax(torch.randn(3, 4, 2, dtype=torch.float64), 1).requires_grad_()
    weight = torch.rand(4, dtype=torch.float64) + 0.5

    def fn(logits, probs):
        return CF.cross_entropy(logits, probs, weight, reduction=reduction, label_smoothing=0.2)

    assert torch.autograd.gradcheck(fn, (x, target))


def mixed_targets(labels: torch.Tensor, classes: int, lam: float, cut: bool) -> torch.Tensor:
    """Targets as torchvision's v2 MixUp / CutMix make them: each sample's one-hot mixed with its
    neighbour's, by lam (MixUp) or by a box area per batch that leaves some pairs equal (CutMix)."""
    one_hot = F.one_hot(labels, classes).to(torch.float64)
    if cut:  # a 3x3 box of an 8x8 image pasted from the neighbour: lam = 1 - 9/64
        lam = 1 - 9 / 64
    return one_hot.roll(1, 0) * (1 - lam) + one_hot * lam


@pytest.mark.parametrize(
    ("cut", "smoothing", "weighted", "reduction"),
    list(itertools.product([False, True], [0.0, 0.1], [False, True], REDUCTIONS)),
)
def test_cross_entropy_mixup_cutmix_targets_match_torch_and_gradcheck(
    cut: bool, smoothing: float, weighted: bool, reduction: str
) -> None:
    """The soft targets MixUp/CutMix train with: forward, d/dlogits and d/dtarget in float64
    equal torch's, label smoothing and class weights as torch defines them for probabilities
    (smoothed target ``(1 - eps) * p + eps / C``, weights per class, mean over samples)."""
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 5, (8,), generator=gen)
    x = torch.randn(8, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    target = mixed_targets(labels, 5, lam=0.3, cut=cut).requires_grad_()
    weight = torch.rand(5, dtype=torch.float64, generator=gen) + 0.5 if weighted else None
    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}
    ours = lambda a, b: L.CrossEntropyLoss(**kwargs)(a, b)  # noqa: E731
    compare(ours, lambda a, b: F.cross_entropy(a, b, **kwargs), x, target, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(ours, (x, target))


@pytest.mark.parametrize(
    ("reduction", "weighted"), list(itertools.product(REDUCTIONS, [False, True]))
)
def test_nll_and_mse_gradcheck(reduction: str, weighted: bool) -> None:
    x, target = class_batch((5, 3, 2), ignore=2)
    weight = torch.rand(3, dtype=torch.float64) + 0.5 if weighted else None
    log_probs = torch.log_softmax(x, 1).requires_grad_()
    nll = lambda t: CF.nll_loss(t, target, weight, ignore_index=2, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(nll, (log_probs,))
    y = torch.randn_like(x).requires_grad_()
    elem = torch.rand_like(x) if weighted else None
    mse = lambda a, b: CF.mse_loss(a, b, reduction=reduction, weight=elem)  # noqa: E731
    assert torch.autograd.gradcheck(mse, (x.requires_grad_(), y))


# --- properties against torch.nn -------------------------------------------------------------

loss_shapes = st.sampled_from([(5,), (0, 3), (4, 3), (3, 5, 2), (2, 4, 3, 2)])


@layer_settings
@given(
    shape=loss_shapes,
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    weighted=st.booleans(),
    ignore=st.sampled_from([None, 0]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 100),
)
def test_cross_entropy_matches_torch(shape, reduction, smoothing, weighted, ignore, dtype, seed):
    x, target = class_batch(shape, dtype, seed, ignore)
    classes = shape[1] if len(shape) > 1 else shape[0]
    weight = torch.rand(classes, dtype=dtype) + 0.5 if weighted else None
    custom = L.CrossEntropyLoss(
        weight,
        ignore_index=-100 if ignore is None else ignore,
        reduction=reduction,
        label_smoothing=smoothing,
    )
    builtin = nn.CrossEntropyLoss(
        weight,
        ignore_index=-100 if ignore is None else ignore,
        reduction=reduction,
        label_smoothing=smoothing,
    )
    compare(lambda a: custom(a, target), lambda a: builtin(a, target), x.requires_grad_())


@layer_settings
@given(
    shape=loss_shapes,
    reduction=st.sampled_from(REDUCTIONS),
    smoothing=st.sampled_from([0.0, 0.25]),
    weighted=st.booleans(),
    seed=st.integers(0, 100),
)
def test_cross_entropy_probability_targets_match_torch(shape, reduction, smoothing, weighted, seed):
    x, _ = class_batch(shape, seed=seed)
    class_dim = 1 if len(shape) > 1 else 0
    probs = torch.softmax(torch.randn(shape, dtype=torch.float64), class_dim).requires_grad_()
    weight = torch.rand(shape[class_dim], dtype=torch.float64) + 0.5 if weighted else None
    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}
    compare(
        lambda a, b: CF.cross_entropy(a, b, **kwargs),
        lambda a, b: F.cross_entropy(a, b, **kwargs),
        x.requires_grad_(),
        probs,
    )


@layer_settings
@given(
    shape=loss_shapes,
    reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(),
    ignore=st.sampled_from([None, 1]),
    dtype=st.sampled_from([torch.float64, torch.float32]),
    seed=st.integers(0, 100),
)
def test_nll_loss_matches_torch(shape, reduction, weighted, ignore, dtype, seed) -> None:
    x, target = class_batch(shape, dtype, seed, ignore)
    classes = shape[1] if len(shape) > 1 else shape[0]
    weight = torch.rand(classes, dtype=dtype) + 0.5 if weighted else None
    ignore_index = -100 if ignore is None else ignore
    custom = L.NLLLoss(weight, ignore_index=ignore_index, reduction=reduction)
    builtin = nn.NLLLoss(weight, ignore_index=ignore_index, reduction=reduction)
    compare(lambda a: custom(a, target), lambda a: builtin(a, target), x.requires_grad_())


@layer_settings
@given(
    shape=st.lists(st.integers(0, 4), max_size=3),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_mse_loss_matches_torch(shape, reduction, dtype) -> None:
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = torch.randn(shape, dtype=dtype, requires_grad=True)
    custom, builtin = L.MSELoss(reduction=reduction), nn.MSELoss(reduction=reduction)
    compare(custom, builtin, x, y)


def test_mse_broadcasts_with_torchs_warning() -> None:
    x, y = torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.warns(UserWarning, match="different to the input size"):
        compare(CF.mse_loss, F.mse_loss, x, y)


def test_cross_entropy_stays_finite_with_masked_logits() -> None:
    """-inf logits of non-target classes must not turn the loss into NaN (0 * -inf)."""
    x = torch.tensor([[0.5, float("-inf"), 1.0]], requires_grad=True)
    target = torch.tensor([2])
    compare(lambda a: CF.cross_entropy(a, target), lambda a: F.cross_entropy(a, target), x)


@pytest.mark.parametrize(
    ("ours", "theirs", "make_target"),
    [
        (L.CrossEntropyLoss(), nn.CrossEntropyLoss(), lambda: torch.tensor([1, 0, 3])),
        (L.NLLLoss(), nn.NLLLoss(), lambda: torch.tensor([1, 0, 3])),
        (L.MSELoss(), nn.MSELoss(), lambda: torch.randn(3, 4)),
    ],
)
def test_cpu_bf16_autocast_runs_in_float32_like_builtin(ours, theirs, make_target) -> None:
    x, target = torch.randn(3, 4, dtype=torch.bfloat16), make_target()
    leaf_ours, leaf_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours_out, theirs_out = ours(leaf_ours, target), theirs(leaf_theirs, target)
    assert ours_out.dtype == theirs_out.dtype == torch.float32
    torch.testing.assert_close(ours_out, theirs_out, **BF16_TOL)
    ours_out.backward()
    theirs_out.backward()
    assert leaf_ours.grad.dtype == leaf_theirs.grad.dtype == torch.bfloat16
    torch.testing.assert_close(leaf_ours.grad, leaf_theirs.grad, **BF16_TOL)


@pytest.mark.parametrize(
    ("custom", "builtin"),
    [
        (
            L.CrossEntropyLoss(torch.rand(3), ignore_index=2, label_smoothing=0.1),
            nn.CrossEntropyLoss(torch.rand(3), ignore_index=2, label_smoothing=0.1),
        ),
        (L.NLLLoss(torch.rand(3), reduction="sum"), nn.NLLLoss(torch.rand(3), reduction="sum")),
        (L.MSELoss(reduction="none"), nn.MSELoss(reduction="none")),
    ],
)
def test_drop_in_repr_and_state_dict(custom: nn.Module, builtin: nn.Module) -> None:
    assert repr(custom) == repr(builtin) and isinstance(custom, type(builtin))
    assert custom.state_dict().keys() == builtin.state_dict().keys()


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: L.CrossEntropyLoss()(torch.randn(4, 3), torch.tensor([0, 1, 2])),
            ValueError,
            r"CrossEntropyLoss\(\): cross_entropy: expected class-index target of shape \(4,\)",
        ),
        (
            lambda: L.NLLLoss()(torch.randn(2, 3, 5), torch.zeros(2, 4, dtype=torch.long)),
            ValueError,
            r"NLLLoss\(\): .*target of shape \(2, 5\).*got \(2, 4\)",
        ),
        (
            lambda: L.CrossEntropyLoss()(torch.randn(2, 3), torch.tensor([0, 3])),
            IndexError,
            r"target 3 is out of bounds for 3 classes",
        ),
        (
            lambda: L.CrossEntropyLoss()(torch.randn(2, 3), torch.rand(2, 4)),
            ValueError,
            r"class-probability targets must have the input's shape \(2, 3\)",
        ),
        (
            lambda: L.CrossEntropyLoss(torch.ones(4))(torch.randn(2, 3), torch.tensor([0, 1])),
            ValueError,
            r"weight must hold one value per class, shape \(3,\), got \(4,\)",
        ),
        (
            lambda: L.CrossEntropyLoss(torch.ones(3, dtype=torch.float64))(
                torch.randn(2, 3), torch.tensor([0, 1])
            ),
            TypeError,
            "weight is torch.float64",
        ),
        (
            lambda: CF.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), reduction="avg"),
            ValueError,
            r"reduction must be one of \('none', 'mean', 'sum'\), got 'avg'",
        ),
        (
            lambda: CF.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), label_smoothing=2.0),
            ValueError,
            "label_smoothing must be between 0.0 and 1.0",
        ),
        (
            lambda: CF.cross_entropy(torch.randn(2, 3), torch.tensor([0, 1], device="meta")),
            ValueError,
            "target is on meta but input is on cpu",
        ),
        (
            lambda: L.MSELoss()(torch.randn(4, 3), torch.randn(2)),
            ValueError,
            r"MSELoss\(\): mse_loss: target of shape \(2,\) cannot be broadcast",
        ),
        (
            lambda: CF.nll_loss(torch.randn(2, 3), torch.rand(2, 3)),
            TypeError,
            "nll_loss expects class-index",
        ),
    ],
)
def test_errors_say_what_is_wrong(call, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
