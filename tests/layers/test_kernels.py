"""The custom operators that carry the hand-written conv and max-pool kernels into compiled graphs.

``torch.library.opcheck`` is PyTorch's own test for an operator: its schema (no hidden
mutation, no aliasing), its fake implementation against the real one (shapes, dtypes *and
strides*, which inductor plans buffers by) and its use under AOTAutograd, static and dynamic.
The compiled-equals-eager tests of whole models are in ``tests/test_compile.py``.
"""

from __future__ import annotations

import pytest
import torch

import cnnlab.functional as F
from cnnlab.functional import _kernels
from cnnlab.functional._pool_windows import pool_geometry

CONV_CASES = [
    # (in_channels, out_channels, size, kernel, stride, padding, dilation, groups)
    pytest.param(3, 8, 9, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1, id="same-3x3"),
    pytest.param(4, 6, 10, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1, id="stride-2"),
    pytest.param(4, 4, 8, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1, id="1x1-unpadded"),
    pytest.param(6, 6, 11, 3, (1, 2), (0, 1, 2, 0), (2, 1), 3, id="grouped-dilated-uneven"),
    pytest.param(4, 4, 7, 5, (1, 1), (4, 4, 4, 4), (1, 1), 1, id="over-padded"),
]


def _conv_inputs(cin, cout, size, kernel, groups, dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, size, size + 1, generator=gen, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin // groups, kernel, kernel, generator=gen, dtype=dtype)
    return x, w, torch.randn(cout, generator=gen, dtype=dtype)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("cin", "cout", "size", "kernel", "stride", "pad", "dil", "groups"), CONV_CASES
)
def test_conv_operators_pass_opcheck(
    cin, cout, size, kernel, stride, pad, dil, groups, dtype, channels_last
) -> None:
    x, w, b = _conv_inputs(cin, cout, size, kernel, groups, dtype, channels_last)
    torch.library.opcheck(_kernels._conv2d, (x, w, b, stride, pad, dil, groups))
    torch.library.opcheck(_kernels._conv2d, (x, w, None, stride, pad, dil, groups))
    out = _kernels._conv2d(x, w, b, stride, pad, dil, groups)
    grad = torch.randn_like(out)
    both = (grad, x, w, stride, pad, dil, groups)
    torch.library.opcheck(_kernels._conv2d_input_grad, both)
    torch.library.opcheck(_kernels._conv2d_weight_grad, both)
    torch.library.opcheck(_kernels._conv2d_backward, both)
    # an NCHW-contiguous gradient, as a compiled graph may hand one over
    grad = grad.contiguous()
    torch.library.opcheck(_kernels._conv2d_input_grad, (grad, *both[1:]))
    torch.library.opcheck(_kernels._conv2d_backward, (grad, *both[1:]))


POOL_CASES = [
    # (kernel, stride, padding, dilation, ceil_mode, size)
    pytest.param(2, 2, 0, 1, False, 8, id="2x2"),
    pytest.param(2, 2, 0, 1, True, 7, id="2x2-ceil-remainder"),
    pytest.param(3, 2, 1, 1, False, 9, id="3x3-overlapping-padded"),
    pytest.param(3, 1, 1, 2, True, 8, id="dilated"),
    pytest.param(17, 17, 0, 1, False, 17, id="289-window-positions"),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation", "ceil", "size"), POOL_CASES)
def test_max_pool_operators_pass_opcheck(
    kernel, stride, padding, dilation, ceil, size, channels_last
) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, size, size + 1, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dims = pool_geometry("max_pool2d", x, kernel, stride, padding, dilation, ceil)
    flat = _kernels._flat(dims)
    torch.library.opcheck(_kernels._max_pool2d, (x, flat))
    out, arg = _kernels._max_pool2d(x, flat)
    assert arg.dtype == (torch.uint8 if kernel * kernel <= 256 else torch.int32)
    grad = torch.randn_like(out)
    for grad_ in (grad, grad.contiguous()):
        torch.library.opcheck(
            _kernels._max_pool2d_backward, (grad_, arg, flat, list(x.shape), channels_last)
        )


def test_compiled_layers_call_the_operators_and_eager_calls_the_math() -> None:
    """Compiled, the conv and max-pool kernels are one graph node each, forward and backward;
    in eager mode they never are, so dispatch modes (the no-fallback guard, the host-sync trap)
    and fake tensors see the kernels' own ops."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch.utils._python_dispatch import TorchDispatchMode

    graphs: list[torch.fx.GraphModule] = []

    def record(gm: torch.fx.GraphModule, _inputs):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    def step(x, w):
        return F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)

    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    torch._dynamo.reset()
    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    torch.compile(step, backend=backend, fullgraph=True)(x, w).sum().backward()
    forward, backward = ({str(n.target) for n in gm.graph.nodes} for gm in graphs)
    assert {"cnnlab.conv2d.default", "cnnlab.max_pool2d.default"} <= forward
    assert {"cnnlab.conv2d_backward.default", "cnnlab.max_pool2d_backward.default"} <= backward

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Record():
        step(x, w).sum().backward()
    assert not any(name.startswith("cnnlab.") for name in seen)
    assert "aten.bmm.out" in seen or "aten.bmm.default" in seen
