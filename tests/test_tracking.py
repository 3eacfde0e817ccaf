"""logger=mlflow / logger=wandb: one real (tiny) run logs to a local SQLite MLflow store and an
offline W&B run folder; both are read back and compared with the run folder's own files."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from hydra.errors import InstantiationException

from cnnlab.training import tracking
from cnnlab.training.builders import build_loggers
from cnnlab.training.errors import user_message
from training_helpers import train_in_process

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")

QUICK = (
    "trainer.max_epochs=2",
    "model.channels=[8,16,16]",
    "model.hidden=32",
    "viz.filters=false",
    "viz.feature_maps=false",
    "viz.saliency=false",
    "viz.gradcam=false",
    "viz.misclassified=false",
)


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run with CSV, MLflow (SQLite) and W&B (offline) loggers; nothing leaves the machine."""
    root = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, value in {
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "WANDB_DATA_DIR": str(root / "wandb-data"),
            "WANDB_CACHE_DIR": str(root / "wandb-cache"),
            "WANDB_CONFIG_DIR": str(root / "wandb-config"),
        }.items():
            mp.setenv(name, value)
        run = train_in_process(
            root / "outputs" / "train" / "runs" / "2026-01-01_00-00-00",
            "logger=[mlflow,wandb]",
            f"logger.mlflow.tracking_uri=sqlite:///{root}/store/mlflow.db",
            f"logger.mlflow.artifact_location={root}/store/artifacts",
            *QUICK,
        )
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok"
    assert (run / "csv" / "metrics.csv").is_file()  # the tracking loggers bring the CSV one along
    return {"run": run, "store": f"sqlite:///{root}/store/mlflow.db", "metrics": metrics}


@pytest.mark.slow
def test_mlflow_run_reads_back_through_the_client(tracked_run: dict[str, Any], tmp_path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir, metrics = tracked_run["run"], tracked_run["metrics"]
    client = MlflowClient(tracked_run["store"])
    experiment = client.get_experiment_by_name("train")  # experiment_name = task_name
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.info.run_name == "2026-01-01_00-00-00"
    assert found.data.tags[tracking.RUN_DIR_TAG] == str(run_dir.resolve())

    params = found.data.params  # the resolved config, flattened
    assert params["model.impl"] == "custom"
    assert params["model._target_"] == "cnnlab.models.SeedCNN"
    assert params["optimizer.lr"] == "0.001"
    assert params["trainer.max_epochs"] == "2"

    history = client.get_metric_history(found.info.run_id, "val/acc")
    assert len(history) == 2 and history[0].step < history[1].step  # one value per epoch
    assert found.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert found.data.metrics["val/acc_best"] == pytest.approx(metrics["val/acc_best"])

    names = {a.path for a in client.list_artifacts(found.info.run_id, "viz")}
    assert {"viz/training_curves.png", "viz/confusion_matrix.png"} <= names
    assert "viz/gradcam.png" not in names  # only what this run drew
    best = Path(client.download_artifacts(found.info.run_id, "best/best.ckpt", str(tmp_path)))
    assert best.read_bytes() == (run_dir / "checkpoints" / "best.ckpt").read_bytes()
    assert not {a.path for a in client.list_artifacts(found.info.run_id, "last")}


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of an offline ``run-<id>.wandb`` file (a LevelDB-style log:
    32 KiB blocks of chunks with a 7-byte header: CRC, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the tail of a block too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _items(items: Any) -> dict[str, Any]:
    return {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in items}


@pytest.mark.slow
def test_wandb_offline_run_folder_holds_the_run(tracked_run: dict[str, Any]) -> None:
    run_dir, metrics = tracked_run["run"], tracked_run["metrics"]
    (folder,) = (run_dir / "wandb").glob("offline-run-*")
    (log_file,) = folder.glob("run-*.wandb")
    records = wandb_records(log_file)
    by_kind: dict[str, list[Any]] = {}
    for record in records:
        by_kind.setdefault(record.WhichOneof("record_type"), []).append(record)

    rows = [_items(r.history.item) for r in by_kind["history"]]
    val_acc = [row["val/acc"] for row in rows if "val/acc" in row]
    assert len(val_acc) == 2
    (test_row,) = [row for row in rows if "test/acc" in row]
    assert test_row["test/acc"] == pytest.approx(metrics["test/acc"])
    images = {key.split("/")[1] for row in rows for key in row if key.startswith("viz/")}
    assert {"training_curves", "confusion_matrix"} <= images
    assert list((folder / "files" / "media" / "images" / "viz").glob("confusion_matrix_*.png"))

    config: dict[str, Any] = {}
    for record in by_kind["config"]:
        config.update(_items(record.config.update))
    assert config["model.impl"] == "custom" and config["optimizer.lr"] == 0.001

    (artifact,) = [r.artifact for r in by_kind["artifact"]]
    assert artifact.type == "model" and "best" in artifact.aliases
    assert [entry.path for entry in artifact.manifest.contents] == ["model.ckpt"]
    (exit_record,) = by_kind["exit"]
    assert exit_record.exit.exit_code == 0  # closed by cnnlab, not by the interpreter's exit


def test_a_missing_tracking_package_is_one_line(compose_config, monkeypatch) -> None:
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda name: None if name == "mlflow" else real(name)
    )
    cfg = compose_config("logger=mlflow")
    with pytest.raises(InstantiationException) as caught:
        build_loggers(cfg)
    assert user_message(caught.value) == ("logger=mlflow needs mlflow: pip install 'cnnlab[track]'")


def test_an_online_wandb_run_without_a_login_is_one_line(tmp_path, monkeypatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a key
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = tracking.WandbLogger(offline=False, save_dir=str(tmp_path), run_dir=str(tmp_path))
    with pytest.raises(tracking.TrackingUnavailableError) as caught:
        _ = logger.experiment
    message = user_message(caught.value)
    assert message is not None and "wandb login" in message and "offline=true" in message


@pytest.mark.slow
def test_a_continued_run_goes_on_in_its_mlflow_run(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = str(tmp_path / "outputs" / "train" / "multiruns" / "2026-01-01_00-00-00" / "3")
    first = tracking.MLFlowLogger("exp", tracking_uri=store, run_dir=run_dir)
    first.log_config({"trainer": {"max_epochs": 1}, "seed": 42})
    first.log_metrics({"val/acc": 0.5}, step=3)
    first.finalize("success")
    assert first.experiment.get_run(first.run_id).info.run_name == "2026-01-01_00-00-00/3"

    other = tracking.MLFlowLogger("exp", tracking_uri=store, run_dir=str(tmp_path / "other"))
    other.continue_from(4)
    assert other.run_id != first.run_id  # another folder: a new run
    again = tracking.MLFlowLogger("exp", tracking_uri=store, run_dir=run_dir)
    again.continue_from(4)
    assert again.run_id == first.run_id
    # continued with trainer.max_epochs=2: params are write-once in MLflow, the change is a tag
    again.log_config({"trainer": {"max_epochs": 2}, "seed": 42, "l2": 0.1})
    again.log_metrics({"val/acc": 0.75}, step=4)
    run = again.experiment.get_run(first.run_id)
    assert run.data.params == {"trainer.max_epochs": "1", "seed": "42", "l2": "0.1"}
    assert run.data.tags["resumed.trainer.max_epochs"] == "2"
    history = again.experiment.get_metric_history(first.run_id, "val/acc")
    assert [(m.step, m.value) for m in history] == [(3, 0.5), (4, 0.75)]
