import pytest
import torch
from torchvision.datasets import CIFAR10

from cnnlab.data import CIFAR10DataModule, DatasetNotFoundError


def test_metadata_needs_no_files(tmp_path):
    dm = CIFAR10DataModule(data_dir=tmp_path / "nothing-here")
    assert dm.num_classes == 10 and dm.input_shape == (3, 32, 32)
    assert dm.class_names[0] == "airplane" and dm.class_names[-1] == "truck"
    assert dm.mean == (0.4914, 0.4822, 0.4465) and dm.std == (0.2470, 0.2435, 0.2616)
    assert CIFAR10DataModule(data_dir=tmp_path, normalize=False).mean == (0.0, 0.0, 0.0)


def test_loads_real_pickle_format(tmp_path, write_cifar10):
    test_rows = write_cifar10(tmp_path, per_batch=20)
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False, normalize=False, batch_size=8)
    dm.prepare_data()
    dm.setup()
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == 100
    assert len(dm.dataset("val")) == 10  # val_fraction 0.1, one per class
    assert len(dm.dataset("test")) == 20
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == list(range(8)) and labels.dtype == torch.int64
    # rows are R plane, G plane, B plane, each row-major 32x32
    expected = torch.from_numpy(test_rows[:8]).view(8, 3, 32, 32).float() / 255
    torch.testing.assert_close(images, expected)


def test_missing_files_without_download_explain_where_to_put_them(tmp_path):
    dm = CIFAR10DataModule(data_dir=tmp_path, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message
    assert "data_batch_1" in message and "test_batch" in message
    assert CIFAR10.url in message and "data.download=true" in message


def test_offline_download_fails_with_the_same_clear_message(tmp_path, monkeypatch):
    unreachable = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # discard port: refused at once
    monkeypatch.setattr(CIFAR10, "url", unreachable)
    dm = CIFAR10DataModule(data_dir=tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert "download failed" in message and unreachable in message
    assert str(tmp_path.resolve() / "cifar-10-batches-py") in message
    assert "needs internet" in message
