"""ClassificationModule: the objective, the metrics and what its checkpoints hold."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cnnlab.training.builders import load_run
from cnnlab.training.losses import CrossEntropy, LogSoftmaxNLL, SoftmaxMSE, weight_penalty
from cnnlab.training.module import ClassificationModule

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def _batch(n: int = 16, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, classes, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _reference(loss: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, target, label_smoothing=0.1)
    if loss == "mse":
        return F.mse_loss(logits.softmax(1), F.one_hot(target, logits.shape[1]).float())
    return F.nll_loss(F.log_softmax(logits, 1), target)


LOSSES = {
    "ce": lambda impl: CrossEntropy(impl, label_smoothing=0.1),
    "mse": SoftmaxMSE,
    "nll": LogSoftmaxNLL,
}


@pytest.mark.parametrize("impl", ["builtin", "custom"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_match_their_definition(name: str, impl: str) -> None:
    logits, target = _batch()
    logits.requires_grad_(True)
    loss = LOSSES[name](impl)(logits, target)
    expected = _reference(name, logits, target)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


def test_unknown_impl_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=r"model\.impl"):
        CrossEntropy("cuda")


def _module(l1: float = 0.0, l2: float = 0.0, classes: int = 3) -> ClassificationModule:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, classes))
    return ClassificationModule(model, CrossEntropy("builtin"), classes, ADAM, l1=l1, l2=l2)


def test_l1_and_l2_penalties_are_added_to_the_training_loss() -> None:
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    plain, penalised = _module(), _module(l1=0.01, l2=0.1)
    weight, data_loss = plain.model[1].weight, plain.criterion(plain(x), y)
    expected = data_loss + 0.01 * weight.abs().sum() + 0.1 * weight.pow(2).sum()
    _, penalised_data_loss, objective = penalised.logits_and_loss(x, y)
    torch.testing.assert_close(objective, expected)
    torch.testing.assert_close(penalised_data_loss, data_loss)  # what validation reports
    torch.testing.assert_close(plain.logits_and_loss(x, y)[2], data_loss)


def test_penalty_skips_biases() -> None:
    layer = nn.Linear(2, 2)
    torch.testing.assert_close(weight_penalty(layer, l1=1.0), layer.weight.abs().sum())


def test_test_metrics_agree_with_scikit_learn() -> None:
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    module = _module()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    (metrics,) = trainer.test(module, loader, verbose=False)
    preds = module(x).argmax(1).numpy()
    assert metrics["test/acc"] == pytest.approx(accuracy_score(y, preds), abs=1e-6)
    for key, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        expected = fn(y, preds, average="macro", zero_division=0)
        assert metrics[f"test/{key}"] == pytest.approx(expected, abs=1e-6), key
    confusion = torch.tensor(module.test_confusion_matrix)
    assert confusion.sum() == 64 and confusion.trace() == (preds == y.numpy()).sum()


def test_checkpoint_loads_weights_only_and_rebuilds_the_run(compose_config) -> None:
    from cnnlab.train import train

    cfg = compose_config(
        "model.impl=builtin", "model.hidden=32", "debug=limit", "trainer.max_epochs=1", "test=false"
    )
    _, module, datamodule = train(cfg)
    ckpt = torch.load(f"{cfg.paths.output_dir}/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["cnnlab_config"]["model"]["impl"] == "builtin"
    assert ckpt["cnnlab_config"]["choices"]["model"] == "seed_cnn"

    run_cfg, loaded, _ = load_run(cfg.paths.output_dir)
    assert run_cfg.optimizer._target_ == "torch.optim.Adam"
    images, _ = next(iter(datamodule.val_dataloader()))
    module.eval()
    torch.testing.assert_close(loaded(images), module(images))
