"""The hand-written path under torch.compile: one graph, no recompiles, the numbers of eager.

``aot_eager`` traces exactly what inductor gets (dynamo + AOTAutograd, forward and backward)
but runs it with eager kernels, so it checks graph breaks, recompiles and the traced backward
in seconds; the inductor tests (slow) check the generated code as well.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import cnnlab.layers as L
from cnnlab.models import MODELS
from cnnlab.training.compile import CompileOptions, compile_options

#: every model, with the options that put dropout and batch norm into the graph too
MODEL_KWARGS = {
    "seed_cnn": {"in_shape": (3, 32, 32), "dropout": 0.3, "batch_norm": True},
    "lenet5": {"in_shape": (1, 28, 28)},
    "vgg": {"in_shape": (3, 32, 32)},
    "resnet": {"in_shape": (3, 32, 32), "depth": 20},
}
FAST = {"seed_cnn", "lenet5"}  # compiling the deep ones takes ~1 min each on 2 cores


class StepModule(nn.Module):
    """Model + loss in one module, optionally under bf16 autocast: what the trainer compiles."""

    def __init__(self, model: nn.Module, bf16: bool) -> None:
        super().__init__()
        self.model, self.loss, self.bf16 = model, L.CrossEntropyLoss(), bf16

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)
            return logits, self.loss(logits, y)


def _batch(in_shape: tuple[int, ...], n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, *in_shape, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _run_steps(
    step: Callable, module: nn.Module, x, y, steps: int
) -> list[dict[str, torch.Tensor]]:
    """``steps`` forward + backward passes, each seeded alike; logits, loss and every grad."""
    results = []
    for i in range(steps):
        torch.manual_seed(i)  # the same dropout masks in eager and compiled runs
        logits, loss = step(x, y)
        loss.backward()
        out = {"logits": logits.detach().float(), "loss": loss.detach()}
        for name, p in module.named_parameters():
            out[name] = p.grad.detach().clone()
            p.grad = None
        results.append(out)
    return results


def _cases():
    """Every mode for the small models; for the deep ones (a minute or two each) the two that
    between them trace every op: train in fp32 and eval under bf16."""
    for name in MODEL_KWARGS:
        marks = () if name in FAST else (pytest.mark.slow,)
        for train in (True, False):
            for bf16 in (False, True):
                if name not in FAST and train == bf16:
                    continue
                mode = f"{'train' if train else 'eval'}-{'bf16' if bf16 else 'fp32'}"
                yield pytest.param(name, train, bf16, id=f"{name}-{mode}", marks=marks)


@pytest.mark.parametrize(("name", "train", "bf16"), list(_cases()))
def test_model_compiles_as_one_graph_without_recompiles_and_matches_eager(
    name: str, train: bool, bf16: bool
) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = StepModule(MODELS[name](impl="custom", **MODEL_KWARGS[name]), bf16).train(train)
    traced = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(traced, fullgraph=True, backend=counter)
    x, y = _batch(MODEL_KWARGS[name]["in_shape"])

    expected = _run_steps(eager, eager, x, y, steps=3)
    got = _run_steps(compiled, traced, x, y, steps=3)

    assert counter.frame_count == 1, f"{counter.frame_count} graphs: a recompile"
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        for key in want:
            torch.testing.assert_close(have[key], want[key], **tol, msg=f"step {step}: {key}")
    for key, buffer in eager.state_dict().items():  # BN running stats took the same updates
        torch.testing.assert_close(traced.state_dict()[key], buffer, **tol)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", ["seed_cnn", "lenet5"])
def test_inductor_compiled_step_matches_eager(name: str, dtype: torch.dtype) -> None:
    """float64 shows the generated code computes the same thing (to 1e-9); float32 only adds
    rounding, which batch norm's backward amplifies in the first conv's weight gradient (a
    difference of nearly equal sums), so its tolerance is relative to each tensor's scale."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    kwargs = {**MODEL_KWARGS[name], "dropout": 0.0} if name == "seed_cnn" else MODEL_KWARGS[name]
    eager = StepModule(MODELS[name](impl="custom", **kwargs), bf16=False).to(dtype)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    x, y = _batch(kwargs["in_shape"], n=8)
    x = x.to(dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-2
    for want, have in zip(
        _run_steps(eager, eager, x, y, 2),
        _run_steps(compiled, compiled_module, x, y, 2),
        strict=True,
    ):
        for key in want:
            scale = float(want[key].abs().max())
            torch.testing.assert_close(
                have[key], want[key], rtol=tol, atol=tol * scale, msg=lambda m, k=key: f"{k}: {m}"
            )


def test_whole_training_step_with_backward_compiles_as_one_graph() -> None:
    """Forward, loss and ``backward()`` in one compiled function (dynamo's
    ``trace_autograd_ops``): the hand-written backward passes are traced into the graph."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MODELS["lenet5"](impl="custom", **MODEL_KWARGS["lenet5"])
    loss_fn = L.CrossEntropyLoss()
    x, y = _batch((1, 28, 28))

    def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss.detach()

    expected_loss = step(x, y)
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    counter = CompileCounterWithBackend("aot_eager")
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        loss = torch.compile(step, fullgraph=True, backend=counter)(x, y)
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, expected_loss)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], msg=name)


# -- the compile config -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (False, None),
        (True, CompileOptions()),
        ("reduce-overhead", CompileOptions(mode="reduce-overhead")),
        ({"mode": None, "fullgraph": True}, None),
        ({"mode": "max-autotune", "fullgraph": False}, CompileOptions("max-autotune", False)),
    ],
)
def test_compile_config_short_and_long_forms(value, expected) -> None:
    assert compile_options(value) == expected


@pytest.mark.parametrize(
    ("mode", "replays"),
    [("default", False), ("reduce-overhead", True), ("max-autotune", True),
     ("max-autotune-no-cudagraphs", False)],
)  # fmt: skip
def test_modes_that_replay_cuda_graphs_mark_each_step(mode: str, replays: bool) -> None:
    """Inductor's own mode table says which modes record CUDA graphs; those steps must be marked."""
    from torch._inductor import list_mode_options

    assert list_mode_options(mode).get("triton.cudagraphs", False) == replays
    assert CompileOptions(mode).cudagraphs == replays


def test_cuda_graphs_are_replayed_on_a_cuda_device_only() -> None:
    from cnnlab.training.compile import replays_cuda_graphs

    assert replays_cuda_graphs("reduce-overhead", "cuda") and replays_cuda_graphs(
        "max-autotune", "cuda"
    )
    assert not replays_cuda_graphs("reduce-overhead", "cpu")
    assert not replays_cuda_graphs("default", "cuda") and not replays_cuda_graphs(None, "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the warning is for machines without CUDA")
def test_a_cuda_graph_mode_on_a_cpu_says_it_replays_none(caplog) -> None:
    import logging

    import lightning

    from cnnlab.training.module import ClassificationModule

    sgd = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1}
    options = CompileOptions(mode="reduce-overhead")
    module = ClassificationModule(nn.Linear(4, 2), nn.CrossEntropyLoss(), 2, sgd, compile=options)
    module.trainer = lightning.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with caplog.at_level(logging.WARNING, logger="cnnlab.training.module"):
        module.setup("fit")
    assert "compile.mode=reduce-overhead replays CUDA graphs on a CUDA GPU only" in caplog.text


@pytest.mark.parametrize("value", ["fast", {"mode": "turbo"}, 3, {"mode": "default", "dynamic": 2}])
def test_compile_config_typos_are_errors_that_list_the_modes(value) -> None:
    with pytest.raises(ValueError, match="compile"):
        compile_options(value)


@pytest.mark.slow
def test_cli_trains_compiled_and_logs_the_warmup(run_cli, tmp_path) -> None:
    result = run_cli(
        "cnnlab.train",
        "compile=true",
        "trainer.max_epochs=3",
        "viz.enabled=false",
        "trainer.enable_progress_bar=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.compile warm-up" in result.stdout + result.stderr
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.8  # the digits set, compiled hand-written seed CNN, 3 epochs
    assert "compile/warmup_s" in (run_dir / "csv" / "metrics.csv").read_text()


@pytest.mark.slow
def test_ddp_run_compiles_with_the_hand_written_sync_batchnorm(run_cli, tmp_path) -> None:
    """Two gloo processes, each compiling forward + loss with fullgraph=True, batch norm
    synchronised by cnnlab's SyncBatchNorm (its all-gather traced into the graph)."""
    result = run_cli(
        "cnnlab.train",
        "trainer=ddp_cpu",
        "compile=true",
        "model.batch_norm=true",
        "model.channels=[8,16,16]",
        "model.hidden=32",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "viz.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    log = (run_dir / "train.log").read_text()
    assert "torch.compile warm-up" in log
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "ok"


def _torchvision_layers_net() -> nn.Module:
    """Every layer torchvision's models need beyond cnnlab's own, in one small net."""
    return nn.Sequential(
        L.Conv2d(3, 8, 3, padding=1),
        L.BatchNorm2d(8),
        L.Hardswish(inplace=True),
        L.LayerNorm2d(8),
        L.SiLU(inplace=True),
        L.AdaptiveAvgPool2d((3, 2)),
        L.ReLU6(inplace=True),
        L.GELU(approximate="tanh"),
        L.StochasticDepth(0.5, "row"),
        L.Hardsigmoid(),
        L.Sigmoid(),
        L.AdaptiveAvgPool2d(1),
        L.Flatten(),
        L.LayerNorm(8),
        L.ReLU(inplace=True),
        L.GELU(),
        L.Hardtanh(-2.0, 2.0),
        L.Linear(8, 10),
    )


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_torchvision_layers_compile_as_one_graph_and_match_eager(bf16: bool) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager = StepModule(_torchvision_layers_net(), bf16).train()
    traced = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(traced, fullgraph=True, backend=counter)
    x, y = _batch((3, 6, 5), n=8)
    expected = _run_steps(eager, eager, x, y, steps=2)
    got = _run_steps(compiled, traced, x, y, steps=2)
    assert counter.frame_count == 1, f"{counter.frame_count} graphs: a recompile"
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {"rtol": 1e-4, "atol": 1e-5}
    for step, (want, have) in enumerate(zip(expected, got, strict=True)):
        for key in want:
            torch.testing.assert_close(have[key], want[key], **tol, msg=f"step {step}: {key}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_model_compiles_as_one_graph_and_matches_eager(name: str) -> None:
    """``model=torchvision model.impl=custom compile=true``: in-place activations, dropout,
    stochastic depth and squeeze-excitation in one graph. float64, because train-mode batch norm
    over the 1x1 maps of 8x8 digits amplifies float32 rounding to ~1e-2 between any two
    summation orders (custom vs built-in eager included). Tolerance relative to the largest
    gradient: the bias gradient of a batch norm that feeds, through a 1x1 conv, another
    train-mode batch norm is zero in exact arithmetic, so rounding noise on both sides."""
    from cnnlab.models import TorchvisionModel

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TorchvisionModel("custom", (1, 8, 8), 10, name).double().train()
    eager = StepModule(model, bf16=False)
    traced = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(traced, fullgraph=True, backend=counter)
    x, y = _batch((1, 8, 8), n=4)
    expected = _run_steps(eager, eager, x.double(), y, steps=1)
    got = _run_steps(compiled, traced, x.double(), y, steps=1)
    assert counter.frame_count == 1
    scale = max(want.abs().max().item() for want in expected[0].values())
    for key, want in expected[0].items():
        torch.testing.assert_close(got[0][key], want, rtol=1e-7, atol=1e-9 * scale, msg=key)
