"""cnnlab-export: a trained run as a file any runtime loads, checked by running that file.

    cnnlab-export ckpt_path=outputs/train/runs/<time>                       # ONNX, best.ckpt
    cnnlab-export ckpt_path=<run>/checkpoints/last.ckpt format=torchscript out=exported/

The run is rebuilt from its checkpoint as data (``load_run``: allow-listed config, weights only).
Hand-written layers are swapped for their ``torch.nn`` twins first (``convert(to="builtin")``,
the very same weights), because an ONNX graph or a TorchScript module must consist of ops its
runtime knows, not of cnnlab's autograd Functions. The exported file is then loaded by its own
runtime (onnxruntime, ``torch.jit.load``) and run on real test images, at two batch sizes (the
batch axis is dynamic), and its logits are compared with those of the checkpoint's model as it
was trained; a difference beyond ``atol + rtol * |logit|`` fails the command. Everything goes
into this command's own folder (``out``), never into the run it reads.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor, nn

from cnnlab.layers import convert
from cnnlab.paths import CONF_DIR
from cnnlab.training.atomic import atomic_write_text
from cnnlab.training.builders import checkpoint_of, load_run
from cnnlab.training.errors import UserError, user_errors_as_messages

log = logging.getLogger(__name__)

FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
ONNX_PACKAGES = ("onnx", "onnxruntime")


class ExportError(UserError):
    """The export cannot be made or does not reproduce the checkpoint's outputs."""


def check_request(fmt: str, out: Path, ckpt_file: Path) -> None:
    """A known format with its packages installed, and an ``out`` outside the source run."""
    if fmt not in FILES:
        raise ExportError(
            f"format={fmt!r} is not an export format: use format=onnx or format=torchscript."
        )
    if fmt == "onnx":
        missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
        if missing:
            raise ExportError(
                f"format=onnx needs {' and '.join(missing)}: pip install 'cnnlab[export]'"
            )
    run = ckpt_file.parent.parent if ckpt_file.parent.name == "checkpoints" else ckpt_file.parent
    if out.resolve().is_relative_to(run.resolve()):
        raise ExportError(
            f"out={out} is inside the run folder {run}: exports never write into the run they "
            "read; pass another folder (or leave out= unset: outputs/export/runs/<time>)."
        )


def real_images(datamodule: Any, count: int) -> Tensor:
    """The first ``count`` test images of the run's own data (its transforms included)."""
    datamodule.setup("test")
    batches, total = [], 0
    for images, _labels in datamodule.test_dataloader():
        batches.append(images)
        total += len(images)
        if total >= count:
            break
    return torch.cat(batches)[:count].float().contiguous()


def leftover_custom_layers(model: nn.Module) -> list[str]:
    """Layer types from cnnlab that ``convert`` had no built-in twin for."""
    return sorted(
        {
            type(m).__name__
            for m in model.modules()
            if type(m).__module__.startswith("cnnlab.layers")
        }
    )


def _onnx_export(model: nn.Module, example: Tensor, path: Path, dynamo: Any, opset: Any) -> str:
    """Write ``path``; returns the exporter used. ``auto`` tries torch.export (the maintained
    exporter, needs onnxscript) and falls back to the TorchScript-based one."""
    kwargs = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
    use_dynamo = dynamo is True or (
        dynamo == "auto" and importlib.util.find_spec("onnxscript") is not None
    )
    if use_dynamo:
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
                verbose=False,
                **kwargs,
            )
            return "dynamo"
        except Exception as err:
            if dynamo is True:
                raise ExportError(
                    f"the torch.export-based ONNX exporter failed ({type(err).__name__}: "
                    f"{str(err).strip().splitlines()[0][:200]}); try onnx.dynamo=false."
                ) from err
            log.warning(
                "torch.export-based ONNX export failed (%s); using the TorchScript-based one.", err
            )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter"
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            **kwargs,
        )
    return "torchscript"


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """TorchScript is deprecated in favour of torch.export, but it is what ``torch.jit.load``
    users (C++ libtorch, older deployments) load; the warning says nothing about this file."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        yield


def write_export(fmt: str, model: nn.Module, example: Tensor, path: Path, cfg: DictConfig) -> str:
    """Write the exported file (under a temporary name, renamed when complete)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with torch.no_grad():
        if fmt == "onnx":
            how = _onnx_export(model, example, tmp, cfg.onnx.dynamo, cfg.onnx.opset)
        else:
            with _quiet_jit():
                traced = torch.jit.trace(model, (example,), check_trace=False)
                torch.jit.save(traced, str(tmp))
            how = "torch.jit.trace"
    os.replace(tmp, path)
    return how


def run_exported(fmt: str, path: Path, images: Tensor) -> Tensor:
    """Logits of ``images`` computed by the exported file in its own runtime."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (name,) = [i.name for i in session.get_inputs()]
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])
    with _quiet_jit(), torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(images)


def export(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` into ``out``, verify it, and return what ``export.json`` records."""
    fmt = str(cfg.format)
    ckpt_file = checkpoint_of(cfg)
    check_request(fmt, out, ckpt_file)
    run_cfg, module, datamodule = load_run(ckpt_file)
    trained = module.model.eval()
    images = real_images(datamodule, int(cfg.batch_size))
    model = convert(copy.deepcopy(trained), to="builtin").eval()
    leftovers = leftover_custom_layers(model)
    if leftovers:
        log.warning(
            "No built-in twin for %s: exported as traced from the hand-written ops.", leftovers
        )

    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[fmt]
    exporter = write_export(fmt, model, images, path, cfg)

    # two batch sizes: the full batch and a smaller one, so a fixed batch axis cannot pass
    checks = [images, images[: max(1, len(images) // 3)]]
    with torch.no_grad():
        expected = [trained(x) for x in checks]
    actual = [run_exported(fmt, path, x) for x in checks]
    diff = max(float((a - e).abs().max()) for a, e in zip(actual, expected, strict=True))
    allowed = [cfg.atol + cfg.rtol * e.abs() for e in expected]
    passed = all(
        bool(((a - e).abs() <= t).all()) for a, e, t in zip(actual, expected, allowed, strict=True)
    )
    record = {
        "status": "ok" if passed else "mismatch",
        "checkpoint": str(ckpt_file.resolve()),
        "format": fmt,
        "file": str(path.resolve()),
        "exporter": exporter,
        "impl": run_cfg.model.get("impl"),
        "model": run_cfg.model.get("_target_"),
        "input_shape": [None, *datamodule.input_shape],
        "num_classes": datamodule.num_classes,
        "class_names": list(datamodule.class_names),
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
        "checked_batch_sizes": [len(x) for x in checks],
        "max_abs_diff": diff,
        "atol": cfg.atol,
        "rtol": cfg.rtol,
        "not_converted": leftovers,
    }
    atomic_write_text(out / "export.json", json.dumps(record, indent=2) + "\n")
    if not passed:
        raise ExportError(
            f"{path} does not reproduce the checkpoint: max |exported - checkpoint| = {diff:.3g} "
            f"over the logits of {len(images)} test images, above atol={cfg.atol} + "
            f"rtol={cfg.rtol}*|logit|; the file is kept for inspection (raise atol/rtol to accept it)."
        )
    return record


@contextlib.contextmanager
def _dropped_if_empty(folder: Path) -> Iterator[None]:
    """A failed command leaves no empty ``out`` folder behind (Hydra creates it up front)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()
        raise


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)  # = out=, resolved once by Hydra
    with user_errors_as_messages(), _dropped_if_empty(out):
        record = export(cfg, out)
        print(
            f"cnnlab-export: wrote {record['file']} ({record['format']}, {record['exporter']}); "
            f"max |exported - checkpoint| = {record['max_abs_diff']:.3g} on "
            f"{record['checked_batch_sizes']} test images"
        )


def main() -> None:
    """``cnnlab-export ckpt_path=<run or .ckpt> format=onnx|torchscript [out=DIR]``."""
    _hydra_main()


if __name__ == "__main__":
    sys.exit(main())
