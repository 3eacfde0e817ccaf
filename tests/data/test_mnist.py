import gzip

import numpy as np
import pytest
import torch
from torchvision.datasets import MNIST

from cnnlab.data import DatasetNotFoundError, FashionMNISTDataModule, MNISTDataModule
from cnnlab.data.mnist import read_idx


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files(tmp_path, write_mnist, gz):
    train = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    dm = MNISTDataModule(data_dir=tmp_path, download=False, normalize=False, batch_size=50)
    assert dm.input_shape == (1, 28, 28) and dm.class_names == [str(d) for d in range(10)]
    dm.setup()
    assert len(dm.dataset("train")) == 45 and len(dm.dataset("val")) == 5
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 10 for i in range(20)]
    served = dm.dataset("train").images[dm.dataset("train").indices]
    assert torch.equal(served.squeeze(1), torch.from_numpy(train)[dm.dataset("train").indices])


def test_fashion_mnist_uses_its_own_folder_and_constants(tmp_path, write_mnist):
    write_mnist(tmp_path / "FashionMNIST" / "raw")
    dm = FashionMNISTDataModule(data_dir=tmp_path, download=False)
    assert dm.class_names[0] == "T-shirt/top" and dm.class_names[-1] == "Ankle boot"
    assert dm.mean == (0.2860,) and dm.std == (0.3530,)
    dm.setup()
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape[1:] == (1, 28, 28)


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "bad-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + np.array([5, 28, 28], ">i4").tobytes() + b"\x00" * 10)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(path)


def test_offline_download_names_folder_files_and_mirror(tmp_path, monkeypatch):
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    dm = MNISTDataModule(data_dir=tmp_path, download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path.resolve() / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "http://127.0.0.1:9/" in message and "data.download=true" in message
