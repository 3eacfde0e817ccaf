"""The hand-written kernels as custom operators: what ``torch.compile`` sees of them.

Traced through, the convolution's im2col gather becomes an inductor-generated indexing kernel
over the whole batch's patch matrix, and max pooling one over its windows. On the CPU these
ran at half the speed of the eager code, which copies strided patches into cache-sized chunks
(seed CNN at batch 256, 2 threads: a compiled custom step took 378 ms, the eager one 177 ms).
Registered as custom operators, the kernels run the same eager code inside a compiled graph,
chunks and all; dynamo sees one node per call (no graph break, no recompile), and inductor
fuses everything around them: ReLU, batch norm, average pooling, the loss.

Each operator has a fake implementation that gives its outputs' shapes *and strides*; they must
equal the real ones, because inductor lays out the surrounding buffers by them.

In eager mode the functions below call the math directly: a custom operator costs a few
microseconds of dispatch, and it would hide the kernels' inner ATen calls from dispatch modes
(the no-built-in-fallback guard, the host-sync trap) and from fake tensors.
"""

from collections.abc import Sequence

import torch

from cnnlab.functional import _conv_math, _max_pool_math
from cnnlab.functional._conv_math import ConvGeometry
from cnnlab.functional._im2col import output_size
from cnnlab.functional._pool_windows import Dims, PoolGeometry, layout_of


def conv_forward(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, geometry: ConvGeometry
) -> torch.Tensor:
    """The output: see :func:`cnnlab.functional._conv_math.conv_forward`."""
    if not torch.compiler.is_compiling():
        return _conv_math.conv_forward(x, weight, bias, geometry)
    return _conv2d(x, weight, bias, *geometry)


def conv_input_grad(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """dL/dx of the convolution, channels-last in memory."""
    if not torch.compiler.is_compiling():
        return _conv_math.conv_input_grad(grad_out, x, weight, geometry)
    return _conv2d_input_grad(grad_out, x, weight, *geometry)


def conv_weight_grad(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> torch.Tensor:
    """dL/dW of the convolution, with the weight's own strides."""
    if not torch.compiler.is_compiling():
        return _conv_math.conv_weight_grad(grad_out, x, weight, geometry)
    return _conv2d_weight_grad(grad_out, x, weight, *geometry)


def conv_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dx, dL/dW) when both are needed: one operator, so the two can share a patch matrix."""
    if not torch.compiler.is_compiling():
        return _conv_math.conv_backward(grad_out, x, weight, geometry)
    return _conv2d_backward(grad_out, x, weight, *geometry)


def max_pool_forward(input: torch.Tensor, dims: Dims) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, window position of each max): see :mod:`cnnlab.functional._max_pool_math`."""
    if not torch.compiler.is_compiling():
        return _max_pool_math.max_pool_forward(input, dims)
    return _max_pool2d(input, _flat(dims))


def max_pool_backward(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: Dims,
    input_shape: Sequence[int],
    input_format: torch.memory_format,
) -> torch.Tensor:
    """dL/dinput of max pooling, in the input's memory layout."""
    if not torch.compiler.is_compiling():
        return _max_pool_math.max_pool_backward(grad, arg, dims, input_shape, input_format)
    channels_last = input_format == torch.channels_last
    return _max_pool2d_backward(grad, arg, _flat(dims), list(input_shape), channels_last)


# --- the operators ---------------------------------------------------------------------------


@torch.library.custom_op("cnnlab::conv2d", mutates_args=())
def _conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    geometry = _geometry(stride, padding, dilation, groups)
    return _conv_math.conv_forward(x, weight, bias, geometry)


@_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    n, _, h, w = x.shape
    top, bottom, left, right = padding
    ho = output_size(h + top + bottom, weight.shape[2], stride[0], dilation[0])
    wo = output_size(w + left + right, weight.shape[3], stride[1], dilation[1])
    return _empty((n, weight.shape[0], ho, wo), x.dtype, x.device)


@torch.library.custom_op("cnnlab::conv2d_input_grad", mutates_args=())
def _conv2d_input_grad(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    geometry = _geometry(stride, padding, dilation, groups)
    grad_x = _conv_math.conv_input_grad(grad_out, x, weight, geometry)
    return _canonical(grad_x, torch.channels_last)  # col2im leaves a view of a border


@_conv2d_input_grad.register_fake
def _(grad_out, x, weight, stride, padding, dilation, groups):
    return _empty(x.shape, grad_out.dtype, grad_out.device)


@torch.library.custom_op("cnnlab::conv2d_weight_grad", mutates_args=())
def _conv2d_weight_grad(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    geometry = _geometry(stride, padding, dilation, groups)
    return _conv_math.conv_weight_grad(grad_out, x, weight, geometry)


@_conv2d_weight_grad.register_fake
def _(grad_out, x, weight, stride, padding, dilation, groups):
    return torch.empty_like(weight, memory_format=torch.preserve_format)


@torch.library.custom_op("cnnlab::conv2d_backward", mutates_args=())
def _conv2d_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    geometry = _geometry(stride, padding, dilation, groups)
    grad_x, grad_w = _conv_math.conv_backward(grad_out, x, weight, geometry)
    return _canonical(grad_x, torch.channels_last), grad_w


@_conv2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, dilation, groups):
    grad_w = torch.empty_like(weight, memory_format=torch.preserve_format)
    return _empty(x.shape, grad_out.dtype, grad_out.device), grad_w


def _geometry(
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int
) -> ConvGeometry:
    """The operator schema's int lists back as the tuples the arithmetic compares with."""
    pad4 = tuple(int(v) for v in padding)
    return ConvGeometry(
        (int(stride[0]), int(stride[1])), pad4, (int(dilation[0]), int(dilation[1])), int(groups)
    )


@torch.library.custom_op("cnnlab::max_pool2d", mutates_args=())
def _max_pool2d(input: torch.Tensor, dims: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    output, arg = _max_pool_math.max_pool_forward(input, _dims(dims))
    fmt = layout_of(input)
    return _canonical(output, fmt), _canonical(arg, fmt)


@_max_pool2d.register_fake
def _(input, dims):
    gh, gw = _dims(dims)
    shape = (*input.shape[:2], gh.out, gw.out)
    fmt = layout_of(input)
    arg_dtype = _max_pool_math.position_dtype(gh.kernel * gw.kernel)
    return _empty(shape, input.dtype, input.device, fmt), _empty(
        shape, arg_dtype, input.device, fmt
    )


@torch.library.custom_op("cnnlab::max_pool2d_backward", mutates_args=())
def _max_pool2d_backward(
    grad: torch.Tensor,
    arg: torch.Tensor,
    dims: Sequence[int],
    input_shape: Sequence[int],
    channels_last: bool,
) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grad_input = _max_pool_math.max_pool_backward(grad, arg, _dims(dims), input_shape, fmt)
    return _canonical(grad_input, fmt)


@_max_pool2d_backward.register_fake
def _(grad, arg, dims, input_shape, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return _empty(input_shape, grad.dtype, grad.device, fmt)


def _flat(dims: Dims) -> list[int]:
    """Pooling geometry as the flat int list an operator schema can carry."""
    return [v for g in dims for v in (g.size, g.kernel, g.stride, g.padding, g.dilation, g.out)]


def _dims(flat: Sequence[int]) -> Dims:
    values = [int(v) for v in flat]
    return PoolGeometry(*values[:6]), PoolGeometry(*values[6:])


def _empty(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str,
    fmt: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=fmt)


def _canonical(t: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    """``t`` with exactly the strides ``torch.empty(..., memory_format=fmt)`` gives: the ones
    the fake implementations promise (a copy only where the kernel left a view)."""
    if t.stride() == _empty(t.shape, t.dtype, "meta", fmt).stride():
        return t
    return _empty(t.shape, t.dtype, t.device, fmt).copy_(t)
