import torch

from cnnlab.data import DigitsDataModule


def test_metadata_without_loading():
    dm = DigitsDataModule()
    assert dm.num_classes == 10
    assert dm.input_shape == (1, 8, 8)
    assert dm.class_names == [str(d) for d in range(10)]
    assert len(dm.mean) == len(dm.std) == 1
    assert not dm._datasets  # nothing loaded yet


def test_splits_are_disjoint_stratified_and_seeded():
    def split_rows(seed):
        dm = DigitsDataModule(split_seed=seed)
        dm.setup()
        return {s: dm.dataset(s) for s in ("train", "val", "test")}

    a, b, c = split_rows(0), split_rows(0), split_rows(1)
    sizes = {s: len(d) for s, d in a.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["test"] - 0.2 * 1797) < 10
    assert abs(sizes["val"] - 0.1 * (1797 - sizes["test"])) < 10
    # val is carved from the train pool; test is a pool of its own
    assert a["train"].images is a["val"].images is not a["test"].images
    assert not set(a["train"].indices.tolist()) & set(a["val"].indices.tolist())
    for split in a:
        assert torch.equal(a[split].indices, b[split].indices)
    assert not torch.equal(a["val"].indices, c["val"].indices)
    test_counts = torch.bincount(a["test"].labels, minlength=10)
    assert test_counts.min() >= 30  # stratified: every class keeps its share


def test_loaders_yield_contract_dtypes_and_scaling():
    dm = DigitsDataModule(batch_size=32, normalize=False)
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        images, labels = next(iter(loader))
        assert images.shape == (32, 1, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (32,) and labels.dtype == torch.int64
    assert dm.mean == (0.0,) and dm.std == (1.0,)
    images = torch.cat([x for x, _ in dm.test_dataloader()])
    assert images.min() == 0.0 and images.max() == 1.0  # pixels / 16
    assert len(images) == len(dm.dataset("test"))  # drop_last is off


def test_drop_last_skips_only_the_last_smaller_training_batch():
    kept, dropped = (
        DigitsDataModule(batch_size=100),
        DigitsDataModule(batch_size=100, drop_last=True),
    )
    train = len(kept.dataset("train"))
    assert train % 100  # there is a smaller last batch to drop
    assert [len(y) for _, y in kept.train_dataloader()][-1] == train % 100
    assert {len(y) for _, y in dropped.train_dataloader()} == {100}
    assert len(dropped.train_dataloader()) == train // 100
    for split in ("val", "test"):  # evaluation still sees every image
        loader = getattr(dropped, f"{split}_dataloader")()
        assert sum(len(y) for _, y in loader) == len(dropped.dataset(split))


def test_normalized_train_set_is_roughly_standard():
    dm = DigitsDataModule(batch_size=2000)
    dm.setup()
    images, _ = next(iter(dm.train_dataloader()))
    assert abs(images.mean().item()) < 0.05
    assert abs(images.std().item() - 1) < 0.05


def test_limit_train_samples_takes_a_seeded_subset_of_train():
    full = DigitsDataModule()
    small = DigitsDataModule(limit_train_samples=100)
    full.setup()
    small.setup()
    assert len(small.dataset("train")) == 100
    assert set(small.dataset("train").indices.tolist()) <= set(
        full.dataset("train").indices.tolist()
    )
    assert torch.equal(small.dataset("val").indices, full.dataset("val").indices)
