"""Every hand-written layer on a CUDA GPU against ``torch.nn`` (cuDNN/cuBLAS): fp32 and bf16.

Run by ``make gpu-check`` (``pytest -m gpu``); without a GPU these tests are not collected by
``make test`` and skip when run by hand. fp32 runs with TF32 off for matmuls *and* cuDNN, so
both sides compute in true float32.
"""

from __future__ import annotations

import pytest
import torch
from layer_testing import BF16_TOL, EXAMPLES, assert_twins_match

from cnnlab.layers.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)"),
]
LOCAL_ONLY = {"SyncBatchNorm"}  # needs a process group; tests/layers/test_sync_batchnorm.py


@pytest.fixture(autouse=True)
def true_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "op", [op for op in OPS if op.name not in LOCAL_ONLY], ids=lambda o: o.name
)
def test_layer_matches_builtin_on_cuda(op, precision: str) -> None:
    example = EXAMPLES[op.name]
    custom = example.build(op.custom).cuda()
    builtin = example.build(op.builtin).cuda()
    x = example.input().cuda()
    if precision == "fp32":
        assert_twins_match(custom, builtin, x, rtol=1e-5, atol=1e-5)
        return
    with torch.autocast("cuda", torch.bfloat16):
        assert_twins_match(custom, builtin, x, **BF16_TOL)
