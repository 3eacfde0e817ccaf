"""Training recipe options: MixUp/CutMix (soft targets, accuracy on hard labels), channels_last,
the warm-up + cosine schedule, and old checkpoints without these keys."""

from __future__ import annotations

import copy
import itertools
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.data.mixing import BatchMix, CutMixOptions, MixUpOptions, hard_labels
from cnnlab.models import ResNet, SeedCNN
from cnnlab.training.builders import load_run
from cnnlab.training.losses import CrossEntropy, SoftmaxMSE
from cnnlab.training.module import ClassificationModule
from cnnlab.training.schedulers import WarmupCosineLR
from cnnlab.training.validate import ConfigError, validate_config
from training_helpers import compose_run, train_in_process

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9}


# -- MixUp / CutMix -----------------------------------------------------------------------------
def _images_labels(n: int = 8, classes: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 6, 6, generator=gen), torch.arange(n) % classes


def test_mixup_mixes_each_image_with_its_neighbour_and_the_targets_alike():
    images, labels = _images_labels()
    mix = BatchMix(4, MixUpOptions(alpha=0.4), CutMixOptions())
    torch.manual_seed(0)
    mixed, targets = mix(images, labels)
    lam = targets[0, labels[0]].item()  # image 0 is lam * x0 + (1 - lam) * x7
    assert 0 < lam < 1 and labels[0] != labels[-1]
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images.roll(1, 0))
    one_hot = F.one_hot(labels, 4).float()
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    assert torch.equal(
        hard_labels(targets), torch.where(torch.tensor(lam >= 0.5), labels, labels.roll(1))
    )


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    images, labels = _images_labels()
    mix = BatchMix(4, MixUpOptions(), CutMixOptions(alpha=1.0))
    torch.manual_seed(1)
    mixed, targets = mix(images, labels)
    from_neighbour = (mixed == images.roll(1, 0)) & (mixed != images)
    area = from_neighbour[0, 0].float().mean().item()  # share of image 0 pasted from image 7
    assert 0 < area < 1
    assert targets[0, labels[-1]].item() == pytest.approx(area, abs=1e-6)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))


def test_mix_prob_and_switch_prob():
    images, labels = _images_labels()
    never = BatchMix(4, MixUpOptions(alpha=0.4, prob=0.0), CutMixOptions(alpha=1.0))
    out, targets = never(images, labels)
    assert out is images and targets is labels  # unmixed: class indices, exactly the plain loss
    both = BatchMix(4, MixUpOptions(alpha=0.4, switch_prob=1.0), CutMixOptions(alpha=1.0))
    torch.manual_seed(0)
    out, _ = both(images, labels)  # switch_prob 1: always CutMix, every pixel from x or x.roll
    assert bool(((out == images) | (out == images.roll(1, 0))).all())


def test_soft_targets_through_the_hand_written_losses_match_torch():
    """Mixed targets, as MixUp makes them, through the training losses: hand-written = torch.nn."""
    logits, labels = torch.randn(8, 4, dtype=torch.float64), torch.arange(8) % 4
    one_hot = F.one_hot(labels, 4).double()
    soft = 0.3 * one_hot + 0.7 * one_hot.roll(1, 0)
    for make in (lambda impl: CrossEntropy(impl, label_smoothing=0.1), SoftmaxMSE):
        values = []
        for impl in ("custom", "builtin"):
            x = logits.clone().requires_grad_()
            loss = make(impl)(x, soft)
            values.append((loss, torch.autograd.grad(loss, x)[0]))
        torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=1e-14)
    expected = F.cross_entropy(logits, soft, label_smoothing=0.1)
    torch.testing.assert_close(CrossEntropy("custom", 0.1)(logits, soft), expected)


def _module(model, loss, **options) -> ClassificationModule:
    return ClassificationModule(model=model, loss=loss, num_classes=10, optimizer=SGD, **options)


def test_train_accuracy_counts_the_larger_weight_label_of_each_mixed_image():
    torch.manual_seed(0)
    model = SeedCNN("custom", in_shape=(1, 8, 8), num_classes=10, channels=[4, 4, 4], hidden=8)
    seen: dict[str, torch.Tensor] = {}
    mix = BatchMix(10, MixUpOptions(alpha=1.0), CutMixOptions())

    def recording_mix(images, labels):
        seen["images"], seen["targets"] = mix(images, labels)
        return seen["images"], seen["targets"]

    module = _module(model, CrossEntropy("custom"), batch_mix=recording_mix)
    images, labels = torch.randn(32, 1, 8, 8), torch.arange(32) % 10
    updates = []
    module.train_acc.update = lambda preds, target: updates.append((preds, target))
    module.training_step((images, labels), 0)
    ((preds, target),) = updates
    assert target.dtype == torch.int64  # torchmetrics never sees soft targets
    assert torch.equal(target, seen["targets"].argmax(1))
    assert torch.equal(preds, model(seen["images"]).argmax(1))


def test_nll_with_mixing_is_refused_in_one_line(tmp_path):
    cfg = compose_run(tmp_path, "loss=nll", "data.cutmix.alpha=1.0")
    with pytest.raises(ConfigError, match="loss=nll takes class indices") as err:
        validate_config(cfg, resume=False)
    assert "\n" not in str(err.value)
    validate_config(compose_run(tmp_path, "loss=mse", "data.mixup.alpha=0.2"), resume=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides", [("data.mixup.alpha=0.4",), ("data.cutmix.alpha=1.0", "loss=mse")], ids=["mixup", "cutmix-mse"]
)  # fmt: skip
def test_mixed_training_learns_digits_and_its_run_evaluates(tmp_path, overrides):
    """3 epochs of digits with every batch mixed: test accuracy far above chance (0.1). Measured
    on the 2-core CPU VM (seed 42): 0.91 (MixUp) and 0.83 (CutMix + MSE); unmixed runs reach
    ~0.97 in 10 epochs. And cnnlab-eval's loader rebuilds the run."""
    run = train_in_process(
        tmp_path / "run", *overrides, "trainer.max_epochs=3", "viz.enabled=false",
        "trainer.enable_progress_bar=false", "data.num_workers=0",
    )  # fmt: skip
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["test/acc"] >= 0.7, metrics
    cfg, module, _ = load_run(run)
    assert module.batch_mix is not None and cfg.data.mixup.prob == 1.0


def test_checkpoint_config_without_recipe_keys_still_loads(tmp_path):
    """A run trained before these options existed: its stored config lacks every new key."""
    run = tmp_path / "run"
    cfg = compose_run(run, "trainer.max_epochs=1", "viz.enabled=false", "test=false",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                      "trainer.enable_progress_bar=false", "data.num_workers=0")  # fmt: skip
    from cnnlab.train import run as run_training

    run_training(cfg)
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    old = checkpoint["cnnlab_config"]
    for key in ("mixup", "cutmix"):
        del old["data"][key]
    for key in ("randaugment", "trivialaugment", "random_erasing"):
        del old["data"]["augment"][key]
    del old["channels_last"]
    torch.save(checkpoint, ckpt)
    _, module, datamodule = load_run(ckpt)
    assert module.batch_mix is None and module.memory_format is torch.contiguous_format
    assert not datamodule.augment.enabled


# -- channels_last -------------------------------------------------------------------------------
def _one_step(model, channels_last: bool):
    torch.manual_seed(0)
    images, labels = torch.randn(16, 3, 12, 12), torch.randint(0, 10, (16,))
    module = _module(copy.deepcopy(model), CrossEntropy("custom"), channels_last=channels_last)
    trainer = L.Trainer(
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    seen = []
    forward = module.model.forward
    module.model.forward = lambda x: (
        seen.append(x.is_contiguous(memory_format=torch.channels_last)) or forward(x)
    )
    trainer.fit(module, DataLoader(TensorDataset(images, labels), batch_size=16))
    return module, seen


@pytest.mark.parametrize("impl", ["custom", "builtin"])
@pytest.mark.parametrize("arch", ["seed_cnn", "resnet"])
def test_channels_last_step_equals_the_contiguous_step(impl, arch):
    torch.manual_seed(0)
    if arch == "seed_cnn":
        model = SeedCNN(impl, in_shape=(3, 12, 12), num_classes=10, channels=[8, 8, 8], hidden=16)
    else:
        model = ResNet(impl, in_shape=(3, 12, 12), num_classes=10, depth=8, base_width=8)
    plain, plain_seen = _one_step(model, channels_last=False)
    nhwc, nhwc_seen = _one_step(model, channels_last=True)
    assert nhwc_seen == [True] and plain_seen == [False]
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    for (name, a), b in zip(
        plain.model.state_dict().items(), nhwc.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


# -- warm-up + cosine -----------------------------------------------------------------------------
def _scheduler(total=100, lr=0.1, **options) -> tuple[torch.optim.Optimizer, WarmupCosineLR]:
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    return optimizer, WarmupCosineLR(optimizer, total_steps=total, **options)


def _lrs(optimizer, scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_cosine_values_follow_the_formula():
    optimizer, scheduler = _scheduler(warmup_steps=10, start_factor=0.01, min_lr=0.001)
    lrs = _lrs(optimizer, scheduler, 121)
    # worked by hand: warm-up 0.1 * (0.01 + 0.99 * s / 10), then 0.001 + 0.099 * (1 + cos) / 2
    expected = {0: 0.001, 5: 0.0505, 10: 0.1, 55: 0.0505, 100: 0.001, 120: 0.001}
    for step, lr in expected.items():
        assert lrs[step] == pytest.approx(lr, rel=1e-12, abs=1e-15), step
    cos_at_32 = 0.001 + 0.099 * (1 + math.cos(math.pi * 22 / 90)) / 2
    assert lrs[32] == pytest.approx(cos_at_32, rel=1e-12)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))  # rising warm-up
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:101]))  # then decaying


def test_warmup_in_epochs_uses_the_steps_per_epoch():
    _, scheduler = _scheduler(total=200, warmup_epochs=1.5, max_epochs=10)
    assert scheduler.warmup_steps == 30
    _, scheduler = _scheduler(total=200, warmup_epochs=1.5, max_epochs=10, warmup_steps=7)
    assert scheduler.warmup_steps == 7
    with pytest.raises(ValueError, match="must fit in the run's 200 optimizer steps"):
        _scheduler(total=200, warmup_steps=201)


def test_warmup_cosine_resumes_on_the_same_curve():
    optimizer, scheduler = _scheduler(warmup_epochs=2, max_epochs=10)
    uninterrupted = _lrs(optimizer, scheduler, 100)
    optimizer, scheduler = _scheduler(warmup_epochs=2, max_epochs=10)
    first = _lrs(optimizer, scheduler, 37)
    saved = copy.deepcopy((optimizer.state_dict(), scheduler.state_dict()))
    optimizer, scheduler = _scheduler(warmup_epochs=2, max_epochs=10)
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    assert first + _lrs(optimizer, scheduler, 63) == uninterrupted


def test_warmup_cosine_config_steps_per_optimizer_step_in_lightning(tmp_path):
    """conf/scheduler/warmup_cosine.yaml through the module: total_steps = the trainer's
    estimate, one scheduler step per optimizer step (not per epoch)."""
    from cnnlab.training.builders import plain

    cfg = compose_run(tmp_path, "scheduler=warmup_cosine", "trainer.max_epochs=4",
                      "scheduler.warmup_epochs=1", "scheduler.min_lr=0.0001")  # fmt: skip
    torch.manual_seed(0)
    model = SeedCNN("builtin", in_shape=(1, 8, 8), num_classes=10, channels=[4, 4, 4], hidden=8)
    module = ClassificationModule(
        model=model, loss=CrossEntropy("builtin"), num_classes=10, optimizer=ADAM,
        scheduler=plain(cfg.scheduler),
    )  # fmt: skip
    lrs = []
    module.on_before_optimizer_step = lambda optimizer: lrs.append(optimizer.param_groups[0]["lr"])
    data = TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)
    trainer = L.Trainer(
        max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=8))  # 5 steps per epoch, 20 in all
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 20 and scheduler.warmup_steps == 5
    expected = [scheduler.lr_at(step, 1e-3) for step in range(20)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[0] == pytest.approx(1e-5) and lrs[5] == pytest.approx(1e-3)


@pytest.mark.slow
def test_warmup_cosine_resumes_from_a_lightning_checkpoint(tmp_path):
    """2 epochs, checkpoint, 2 more from it: the same learning rates, step for step, as 4 epochs
    straight (the curve's length fixed by total_steps, as a resumed run with its config has)."""
    scheduler = {
        "_target_": "cnnlab.training.schedulers.WarmupCosineLR", "_partial_": True,
        "total_steps": 20, "warmup_steps": 5, "min_lr": 1e-5, "interval": "step",
    }  # fmt: skip
    data = TensorDataset(torch.randn(40, 1, 8, 8), torch.arange(40) % 10)

    def fit(epochs: int, ckpt_path=None, save=None) -> list[float]:
        torch.manual_seed(0)
        model = SeedCNN("builtin", in_shape=(1, 8, 8), num_classes=10, channels=[4, 4, 4], hidden=8)
        module = ClassificationModule(
            model=model, loss=CrossEntropy("builtin"), num_classes=10, optimizer=ADAM,
            scheduler=scheduler,
        )  # fmt: skip
        lrs: list[float] = []
        module.on_before_optimizer_step = lambda opt: lrs.append(opt.param_groups[0]["lr"])
        trainer = L.Trainer(
            max_epochs=epochs, logger=False, enable_checkpointing=False, accelerator="cpu",
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(module, DataLoader(data, batch_size=8), ckpt_path=ckpt_path)
        if save:
            trainer.save_checkpoint(save)
        return lrs

    straight = fit(4)
    ckpt = tmp_path / "half.ckpt"
    first = fit(2, save=ckpt)
    second = fit(4, ckpt_path=ckpt)
    assert len(straight) == 20 and first + second == straight
