import errno
import gzip
import logging
import re
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import ImageDecodeError, ImageFolderDataModule
from cnnlab.data.archive import ArchiveError
from cnnlab.data.imagefolder import ImageFolderError
from cnnlab.training.errors import user_message


def _all(dm, split):
    dataset = dm.dataset(split)
    return dataset.images[dataset.indices], dataset.labels[dataset.indices]


def test_metadata_from_folders_without_decoding(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 4, "test": 2}, size=(12, 10))
    dm = ImageFolderDataModule(root=root, data_dir=tmp_path)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3
    assert dm.input_shape == (3, 12, 10)
    assert not (root / ".cnnlab-cache").exists()
    assert ImageFolderDataModule(root=root, data_dir=tmp_path, image_size=8).input_shape == (
        3,
        8,
        8,
    )
    gray = write_image_folder(tmp_path / "gray", {"train": 2, "val": 1}, mode="L")
    assert ImageFolderDataModule(root=gray, data_dir=tmp_path).input_shape == (1, 12, 10)


def test_without_val_carves_validation_from_train(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 10, "test": 2})
    dm = ImageFolderDataModule(root=root, data_dir=tmp_path, val_fraction=0.2, batch_size=4)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [24, 6, 6]
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 12, 10) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_with_val_folder_uses_it(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 5, "val": 3, "test": 2})
    dm = ImageFolderDataModule(root=root, data_dir=tmp_path)
    dm.setup()
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [15, 9, 6]
    assert dm.dataset("val").labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_in_memory_and_on_disk_serve_identical_tensors(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 6, "test": 2})
    memory = ImageFolderDataModule(root=root, data_dir=tmp_path, image_size=[8, 6])
    disk = ImageFolderDataModule(root=root, data_dir=tmp_path, image_size=[8, 6], in_memory=False)
    memory.setup()
    disk.setup()
    for split in ("train", "val", "test"):
        mem_images, mem_labels = _all(memory, split)
        disk_images, disk_labels = _all(disk, split)
        assert mem_images.shape[1:] == (3, 8, 6)
        assert torch.equal(mem_images, disk_images) and torch.equal(mem_labels, disk_labels)
    assert torch.equal(
        next(iter(memory.test_dataloader()))[0], next(iter(disk.test_dataloader()))[0]
    )


def test_decoded_images_are_cached_and_reused(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    first = ImageFolderDataModule(root=root, data_dir=tmp_path)
    first.setup()
    caches = sorted((root / ".cnnlab-cache").iterdir())
    assert [p.name.split("-")[0] for p in caches] == ["test", "train"]
    second = ImageFolderDataModule(root=root, data_dir=tmp_path)
    second.setup()
    assert torch.equal(_all(first, "train")[0], _all(second, "train")[0])
    assert sorted((root / ".cnnlab-cache").iterdir()) == caches  # same key, no new files


def test_tar_gz_archive_is_extracted_once_under_data_dir(tmp_path, write_image_folder):
    source = write_image_folder(tmp_path / "src" / "pets-jpeg", {"train": 3, "test": 1})
    archive = tmp_path / "pets-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="pets-jpeg")
    data_dir = tmp_path / "data"
    dm = ImageFolderDataModule(root=archive, data_dir=data_dir)
    assert dm.root == data_dir / "pets-jpeg" and dm.class_names == ["cat", "dog", "emu"]
    marker = dm.root / "train" / "cat" / "000.jpg"
    mtime = marker.stat().st_mtime_ns
    dm.setup()
    assert len(dm.dataset("test")) == 3
    again = ImageFolderDataModule(root=archive, data_dir=data_dir)
    assert again.root == dm.root and marker.stat().st_mtime_ns == mtime  # not extracted twice
    assert [p.name for p in data_dir.iterdir()] == ["pets-jpeg"]  # no leftover scratch folder


def test_corrupt_image_error_names_the_file(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    broken = root / "train" / "dog" / "001.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    for in_memory in (True, False):
        dm = ImageFolderDataModule(root=root, data_dir=tmp_path, in_memory=in_memory, batch_size=9)
        with pytest.raises(ImageDecodeError, match=re.escape(str(broken))):
            dm.setup()
            for _ in dm.train_dataloader():
                pass
            for _ in dm.val_dataloader():
                pass


def test_missing_root_explains_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)missing train/.*<root>/train/<class_name>/"):
        ImageFolderDataModule(root=tmp_path / "nope", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"archive .*nope\.tar\.gz does not exist"):
        ImageFolderDataModule(root=tmp_path / "nope.tar.gz", data_dir=tmp_path)


def test_mixed_sizes_need_image_size(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "test": 1}, size=(12, 10))
    write_image_folder(tmp_path / "odd", {"train": 1}, classes=("emu",), size=(9, 9))
    (tmp_path / "odd" / "train" / "emu" / "000.jpg").rename(root / "train" / "emu" / "zzz.jpg")
    with pytest.raises(ImageDecodeError, match=r"data\.image_size"):
        ImageFolderDataModule(root=root, data_dir=tmp_path).setup()
    dm = ImageFolderDataModule(root=root, data_dir=tmp_path, image_size=10)
    dm.setup()
    assert _all(dm, "train")[0].shape[1:] == (3, 10, 10)


def test_mean_std_from_config_or_estimated(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 4, "test": 1})
    given = ImageFolderDataModule(root=root, data_dir=tmp_path, mean=[0.5], std=[0.2])
    assert given.mean == (0.5, 0.5, 0.5) and given.std == (0.2, 0.2, 0.2)
    estimated = ImageFolderDataModule(root=root, data_dir=tmp_path)
    assert all(0.4 < m < 0.6 for m in estimated.mean)  # uniform random pixels
    assert ImageFolderDataModule(root=root, data_dir=tmp_path, normalize=False).std == (1.0,) * 3
    with pytest.raises(ValueError, match="3-channel"):
        ImageFolderDataModule(root=root, data_dir=tmp_path, mean=[0.1, 0.2]).setup()


# -- data that would silently train the wrong thing ---------------------------------------------
def _gray_first(root):
    """Replace the very first training image with a grayscale one; the rest stay in colour."""
    first = root / "train" / "cat" / "000.jpg"
    first.unlink()
    Image.fromarray(np.full((12, 10), 7, dtype=np.uint8), "L").save(first.with_suffix(".png"))


def test_channels_come_from_every_image_not_the_first(tmp_path, write_image_folder, caplog):
    root = write_image_folder(tmp_path / "pets", {"train": 3, "test": 1})
    _gray_first(root)
    with caplog.at_level(logging.INFO, logger="cnnlab.data.imagefolder"):
        dm = ImageFolderDataModule(root=root, data_dir=tmp_path, normalize=False)
    assert dm.input_shape == (3, 12, 10)
    assert "000.png is grayscale but" in caplog.text and "3 input channel(s)" in caplog.text
    dm.setup()
    images, _ = _all(dm, "test")
    assert images.shape[1] == 3
    colour = np.asarray(Image.open(root / "test" / "dog" / "000.jpg").convert("RGB"))
    assert (colour[..., 0] != colour[..., 1]).any()  # the fixture really is in colour...
    assert any(not torch.equal(img[0], img[1]) for img in images)  # ...and stays so


def test_all_grayscale_gives_one_channel_and_says_why(tmp_path, write_image_folder, caplog):
    root = write_image_folder(tmp_path / "gray", {"train": 2, "test": 1}, mode="L")
    with caplog.at_level(logging.INFO, logger="cnnlab.data.imagefolder"):
        dm = ImageFolderDataModule(root=root, data_dir=tmp_path)
    assert dm.input_shape[0] == 1 and "all 6 training images are grayscale" in caplog.text


def test_explicit_channels_win(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "test": 1})
    assert ImageFolderDataModule(root=root, data_dir=tmp_path, channels=1).input_shape[0] == 1


def test_empty_class_folder_is_refused(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "test": 1})
    (root / "train" / "yak").mkdir()
    (root / "train" / "yak" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageFolderError, match=re.escape(str(root / "train" / "yak"))):
        ImageFolderDataModule(root=root, data_dir=tmp_path)


def test_hidden_folders_are_not_classes(tmp_path, write_image_folder):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "test": 1})
    (root / "train" / ".ipynb_checkpoints").mkdir()
    assert ImageFolderDataModule(root=root, data_dir=tmp_path).class_names == ["cat", "dog", "emu"]


@pytest.mark.parametrize("split", ["test", "val"])
def test_class_missing_from_train_is_refused_up_front(tmp_path, write_image_folder, split):
    root = write_image_folder(tmp_path / "pets", {"train": 2, split: 1})
    write_image_folder(tmp_path / "more", {split: 1}, classes=("yak",))
    (tmp_path / "more" / split / "yak").rename(root / split / "yak")
    with pytest.raises(ImageFolderError, match=r"has class folder\(s\) \['yak'\] that train/"):
        ImageFolderDataModule(root=root, data_dir=tmp_path)  # before any image is decoded


def _archive(tmp_path, write_image_folder):
    source = write_image_folder(tmp_path / "src" / "pets", {"train": 3, "test": 1})
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(source, arcname="pets")
    return archive


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[: len(data) // 2], "EOFError"),
        (lambda data: b"PK\x03\x04 not a tarball at all" * 20, "not a gzip file"),
        (lambda data: gzip.decompress(data), "not a gzip file"),  # a plain .tar named .tar.gz
        (lambda data: b"", "empty file"),
    ],
)
def test_broken_archive_is_named(tmp_path, write_image_folder, damage, reason):
    archive = _archive(tmp_path, write_image_folder)
    archive.write_bytes(damage(archive.read_bytes()))
    data_dir = tmp_path / "data"
    with pytest.raises(ArchiveError, match=re.escape(f"cannot extract {archive}")) as caught:
        ImageFolderDataModule(root=archive, data_dir=data_dir)
    assert reason in str(caught.value)
    assert list(data_dir.iterdir()) == []  # no half-extracted folder to be mistaken for data


def test_full_disk_while_extracting_names_the_target(tmp_path, write_image_folder, monkeypatch):
    archive = _archive(tmp_path, write_image_folder)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full)
    with pytest.raises(OSError) as caught:
        ImageFolderDataModule(root=archive, data_dir=tmp_path / "data")
    assert caught.value.errno == errno.ENOSPC
    assert user_message(caught.value) == (
        f"No space left on device extracting {archive} while writing {tmp_path / 'data' / 'pets'}: "
        "free some disk space, or write elsewhere (hydra.run.dir=..., CNNLAB_ROOT=...)."
    )


# -- the same cases through the real CLI: exit status 1, one line, no traceback ------------------
def _cli_error(result) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["test class missing from train", "empty class folder"])
def test_cli_refuses_a_misleading_folder(run_cli, tmp_path, write_image_folder, case):
    root = write_image_folder(tmp_path / "pets", {"train": 2, "test": 1})
    if case == "empty class folder":
        (root / "train" / "yak").mkdir()
        expected = f"class folder {root / 'train' / 'yak'} holds no images"
    else:
        write_image_folder(tmp_path / "more", {"test": 1}, classes=("yak",))
        (tmp_path / "more" / "test" / "yak").rename(root / "test" / "yak")
        expected = f"{root / 'test'} has class folder(s) ['yak'] that train/ does not have"
    result = run_cli("cnnlab.train", "data=imagefolder", f"data.root={root}", "debug=fdr")
    line = _cli_error(result)
    assert line.startswith("Error: ") and expected in line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_cli_names_a_broken_archive(run_cli, tmp_path, write_image_folder, damage):
    archive = _archive(tmp_path, write_image_folder)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2] if damage == "truncated" else gzip.decompress(data))
    result = run_cli("cnnlab.train", "data=imagefolder", f"data.root={archive}", "debug=fdr")
    assert _cli_error(result).startswith(f"Error: cannot extract {archive}: it is truncated or")
