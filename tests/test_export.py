"""cnnlab-export: ONNX and TorchScript round trips of a digits checkpoint trained with the
hand-written layers; the exported files hold the checkpoint's very weights and reproduce its
logits when run by their own runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from cnnlab import export as export_module
from cnnlab.paths import CONF_DIR
from cnnlab.training.builders import load_run
from cnnlab.training.errors import user_message
from training_helpers import train_in_process


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A digits run with custom layers (conv, pool, BN-free seed CNN), one epoch."""
    run = tmp_path_factory.mktemp("export") / "run"
    return train_in_process(
        run,
        "model.impl=custom",
        "model.channels=[8,16,16]",
        "model.hidden=32",
        "trainer.max_epochs=1",
        "viz.enabled=false",
    )


def export_config(*overrides: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("export", overrides=list(overrides))
    GlobalHydra.instance().clear()
    return cfg


def checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
def test_onnx_round_trip(trained: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    out = tmp_path / "onnx"
    record = export_module.export(export_config(f"ckpt_path={trained}", "format=onnx"), out)
    assert record["status"] == "ok" and record["impl"] == "custom"
    assert record["max_abs_diff"] < 1e-4 and record["checked_batch_sizes"] == [32, 10]
    assert json.loads((out / "export.json").read_text()) == record
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx"]

    graph = onnx.load(str(out / "model.onnx")).graph
    (images,) = graph.input
    assert images.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert [d.dim_value for d in images.type.tensor_type.shape.dim[1:]] == [1, 8, 8]
    # the weights are the checkpoint's, bit for bit
    stored = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
    for name, weight in checkpoint_weights(trained).items():
        if weight.dim() > 1:
            assert any(np.array_equal(weight.numpy(), v) for v in stored.values()), name

    # an independent run of the file on other test images matches the checkpoint's model
    _, module, datamodule = load_run(trained / "checkpoints" / "best.ckpt")
    images_ = export_module.real_images(datamodule, 64)[40:47]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: images_.numpy()})
    with torch.no_grad():
        expected = module.model(images_)
    assert logits.shape == (7, 10)
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_torchscript_round_trip_through_the_cli(trained: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "ts"
    done = run_cli("cnnlab.export", f"ckpt_path={trained}", "format=torchscript", f"out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cnnlab-export: wrote" in done.stdout
    record = json.loads((out / "export.json").read_text())
    assert record["format"] == "torchscript" and record["max_abs_diff"] < 1e-4

    loaded = torch.jit.load(str(out / "model.pt"))
    assert loaded.state_dict().keys() == checkpoint_weights(trained).keys()
    for name, weight in checkpoint_weights(trained).items():
        assert torch.equal(loaded.state_dict()[name], weight), name
    # built-in layers and ATen ops inside, no hand-written layer or autograd Function
    graph = str(loaded.inlined_graph)
    assert "cnnlab.layers" not in graph and "PythonOp" not in graph
    assert "aten::_convolution" in graph or "aten::conv2d" in graph
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.pt"]


def test_a_mismatch_fails_in_one_line_and_keeps_the_file(
    trained: Path, tmp_path: Path, monkeypatch
) -> None:
    run_file = export_module.run_exported  # an exported file whose logits are off by 1e-3
    monkeypatch.setattr(export_module, "run_exported", lambda *a: run_file(*a) + 1e-3)
    cfg = export_config(f"ckpt_path={trained}", "format=torchscript")
    with pytest.raises(export_module.ExportError) as caught:
        export_module.export(cfg, tmp_path / "ts")
    message = user_message(caught.value)
    assert "does not reproduce the checkpoint: max |exported - checkpoint| = 0.001" in message
    assert "\n" not in message
    assert json.loads((tmp_path / "ts" / "export.json").read_text())["status"] == "mismatch"


def test_exports_never_write_into_the_run(trained: Path) -> None:
    before = sorted(p.relative_to(trained) for p in trained.rglob("*"))
    cfg = export_config(f"ckpt_path={trained}", "format=torchscript")
    with pytest.raises(export_module.ExportError, match="inside the run folder"):
        export_module.export(cfg, trained / "exported")
    assert sorted(p.relative_to(trained) for p in trained.rglob("*")) == before


def test_missing_onnx_packages_and_bad_formats_are_one_line(
    trained: Path, tmp_path: Path, monkeypatch
) -> None:
    real = export_module.importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name: None if name == "onnxruntime" else real(name),
    )
    with pytest.raises(export_module.ExportError) as caught:
        export_module.export(export_config(f"ckpt_path={trained}"), tmp_path / "x")
    assert str(caught.value) == "format=onnx needs onnxruntime: pip install 'cnnlab[export]'"
    with pytest.raises(export_module.ExportError, match="format=onnx or format=torchscript"):
        export_module.export(export_config(f"ckpt_path={trained}", "format=tflite"), tmp_path / "x")
