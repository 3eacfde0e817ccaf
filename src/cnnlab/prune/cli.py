"""cnnlab-prune: a trained checkpoint at several sparsities -- accuracy, size, speed, report.

    cnnlab-prune ckpt_path=outputs/train/runs/<time>/checkpoints/best.ckpt amount=0.3,0.5,0.7,0.9
    cnnlab-prune ckpt_path=<run> amount=0.25,0.5 structured=true finetune.epochs=1

The checkpoint is loaded as data (its stored config rebuilds the run, as in ``cnnlab-eval``).
For each amount a fresh copy is pruned: unstructured masks are baked into the weights (same
shapes, more zeros); structured pruning cuts the channels out and writes the remaining widths
into the copy's model config, so each saved checkpoint rebuilds and evaluates with
``cnnlab-eval ckpt_path=<it>`` and loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from cnnlab.eval import run_config
from cnnlab.paths import CONF_DIR
from cnnlab.prune import masks as M
from cnnlab.prune.options import (
    SCOPES,
    PruneConfigError,
    check_amount,
    check_choice,
    check_flag,
    check_layers,
)
from cnnlab.prune.report import write_report
from cnnlab.prune.slim import check_sliceable, slim_model_config, slim_state_dict
from cnnlab.training.atomic import save_torch
from cnnlab.training.builders import (
    build_datamodule,
    build_module,
    build_trainer,
    checkpoint_of,
    load_checkpoint,
    load_weights,
    plain,
    progress_callbacks,
)
from cnnlab.training.errors import user_errors_as_messages
from cnnlab.training.module import ClassificationModule
from cnnlab.training.resume import override_key
from cnnlab.training.validate import validate_config

log = logging.getLogger(__name__)

#: the command line as typed, for the report
COMMAND: list[str] = []

#: this command's own keys: never copied into the rebuilt run's config
PRUNE_KEYS = ("amount", "structured", "scope", "layers", "finetune", "timing")


def amounts_of(value: Any) -> list[float]:
    """The amounts asked for, checked, with the dense model (0) first."""
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    if not items:
        raise PruneConfigError("amount=[] is empty: give fractions in [0, 1), e.g. amount=0.5,0.9.")
    checked = [check_amount(a) for a in items]
    return sorted(set([0.0, *checked]))


def check_options(cfg: DictConfig) -> None:
    amounts_of(cfg.amount)
    check_flag(cfg.structured, "structured")
    check_choice(cfg.scope, SCOPES, "scope")
    check_layers(plain(cfg.layers))
    epochs = cfg.finetune.epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise PruneConfigError(
            f"finetune.epochs={epochs!r} is not valid: expected an integer >= 0."
        )
    lr = cfg.finetune.lr
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise PruneConfigError(f"finetune.lr={lr!r} is not valid: expected null or a number > 0.")


def comma_list_argv(argv: Sequence[str]) -> list[str]:
    """``amount=0.3,0.5`` (a sweep to Hydra, refused without ``-m``) -> ``amount=[0.3,0.5]``."""
    return [
        f"amount=[{arg.split('=', 1)[1]}]"
        if re.fullmatch(r"amount=[^\[\]]*,[^\[\]]*", arg)
        else arg
        for arg in argv
    ]


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    with torch.no_grad():
        params = list(model.parameters())
        return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


class Pruner:
    """One trained run, pruned copy by copy."""

    def __init__(self, cfg: DictConfig, overrides: Sequence[str]) -> None:
        self.cfg = cfg
        self.out = Path(cfg.paths.output_dir)
        self.ckpt_file = checkpoint_of(cfg)
        trained, self.checkpoint = load_checkpoint(self.ckpt_file)
        mine = [o for o in overrides if override_key(o).split(".")[0] not in PRUNE_KEYS]
        self.run_cfg = run_config(cfg, trained, mine)
        with open_dict(self.run_cfg):
            if cfg.finetune.lr is not None:
                self.run_cfg.optimizer.lr = float(cfg.finetune.lr)
        validate_config(self.run_cfg, resume=False)
        self.structured = bool(cfg.structured)
        if self.structured:
            check_sliceable(self.run_cfg.model)
        self.layers = check_layers(plain(cfg.layers))
        self.datamodule = build_datamodule(self.run_cfg)

    def dense(self, run_cfg: DictConfig | None = None) -> ClassificationModule:
        module = build_module(run_cfg or self.run_cfg, self.datamodule)
        load_weights(module, self.checkpoint["state_dict"], self.ckpt_file)
        return module

    def pruned(self, amount: float) -> tuple[ClassificationModule, DictConfig]:
        """A fresh copy of the trained module pruned to ``amount`` (masks still live when
        unstructured, so fine-tuning keeps the zeros), and the config that rebuilds it."""
        module = self.dense()
        if amount == 0.0:
            return module, self.run_cfg
        if not self.structured:
            M.prune_model(module.model, amount, "unstructured", self.cfg.scope, self.layers)
            return module, self.run_cfg
        modules = [m for _, m in M.prunable_layers(module.model, self.layers, structured=True)]
        kept = M.kept_channels(modules, amount, self.cfg.scope)
        state, convs, hidden = slim_state_dict(module.model, kept, prefix="model.")
        slim_cfg = OmegaConf.create(plain(self.run_cfg))
        slim_cfg.model = slim_model_config(plain(self.run_cfg.model), convs, hidden)
        slim = build_module(slim_cfg, self.datamodule)
        rest = {k: v for k, v in module.state_dict().items() if not k.startswith("model.")}
        load_weights(slim, {**rest, **state}, self.ckpt_file)
        return slim, slim_cfg

    def trainer(self, epochs: int = 1) -> L.Trainer:
        cfg = OmegaConf.create(plain(self.run_cfg))
        with open_dict(cfg):
            cfg.trainer.max_epochs = epochs
            cfg.trainer.min_epochs = None
            cfg.trainer.enable_checkpointing = False
            cfg.trainer.default_root_dir = str(self.out)
        return build_trainer(cfg, self.datamodule, progress_callbacks(cfg), loggers=[])

    def test(self, module: ClassificationModule) -> dict[str, float]:
        (metrics,) = self.trainer().test(module, datamodule=self.datamodule, verbose=False)
        return {k: float(v) for k, v in metrics.items()}

    def finetune(self, module: ClassificationModule, epochs: int) -> None:
        L.seed_everything(self.run_cfg.get("seed"), workers=True)
        self.trainer(epochs).fit(module, datamodule=self.datamodule)

    def save(self, module: ClassificationModule, config: DictConfig, amount: float) -> Path:
        kind = "structured" if self.structured else "unstructured"
        path = self.out / "checkpoints" / f"{kind}-{amount:.2f}.ckpt"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_torch(
            path,
            {
                "state_dict": M.baked_state_dict(module.state_dict()),
                "cnnlab_config": plain(config),
                "cnnlab_prune": {
                    "source": str(self.ckpt_file.resolve()),
                    "amount": amount,
                    "structured": self.structured,
                    "scope": str(self.cfg.scope),
                    "layers": list(self.layers),
                    "finetune_epochs": int(self.cfg.finetune.epochs),
                },
                "pytorch-lightning_version": L.__version__,
            },
        )
        return path


def weight_share(model: torch.nn.Module, layers: Sequence[str], dense_total: int) -> float:
    """Share of the dense model's weights in the pruned layer types that are zero or removed."""
    modules = [m for _, m in M.prunable_layers(model, layers)]
    nonzero = sum(int(torch.count_nonzero(m.weight)) for m in modules)
    return 1.0 - nonzero / dense_total


def step_timings(
    models: dict[str, ClassificationModule], batch: tuple[torch.Tensor, torch.Tensor], cfg: Any
) -> dict[str, float]:
    """Median seconds of forward + loss + backward on one training batch, the models taking
    turns call by call so load from other processes hits them alike."""
    from cnnlab.measure import interleaved_timings

    images, labels = batch

    def step_of(module: ClassificationModule):
        def step() -> None:
            module.zero_grad(set_to_none=True)
            _, _, objective = module._logits_and_loss(images, labels)
            objective.backward()

        return step

    for module in models.values():
        module.train()
    timings = interleaved_timings(
        {name: step_of(m) for name, m in models.items()},
        torch.device("cpu"),
        repeats=int(cfg.repeats),
        warmup=int(cfg.warmup),
    )
    return {name: t.median_s for name, t in timings.items()}


def prune_run(cfg: DictConfig, overrides: Sequence[str] = ()) -> Path:
    """Prune ``cfg.ckpt_path`` at every amount; return the report folder."""
    check_options(cfg)
    validate_config(cfg, resume=False)
    pruner = Pruner(cfg, overrides)
    amounts = amounts_of(cfg.amount)
    epochs = int(cfg.finetune.epochs)
    dense = pruner.dense()
    dense_weights = sum(m.weight.numel() for _, m in M.prunable_layers(dense.model, pruner.layers))
    rows: list[dict[str, Any]] = []
    modules: dict[str, ClassificationModule] = {}
    for amount in amounts:
        started = time.perf_counter()
        module, config = pruner.pruned(amount)
        row: dict[str, Any] = {"amount": amount}
        metrics = pruner.test(module)
        row["test_acc"] = metrics["test/acc"]
        row["test_loss"] = metrics["test/loss"]
        if epochs and amount > 0:
            pruner.finetune(module, epochs)
            metrics = pruner.test(module)
            row["test_acc_finetuned"] = metrics["test/acc"]
        elif epochs:
            row["test_acc_finetuned"] = row["test_acc"]  # the dense model is the reference
        M.bake(module)
        path = pruner.save(module, config, amount)
        params, nonzero = parameter_counts(module.model)
        row.update(
            sparsity=weight_share(module.model, pruner.layers, dense_weights),
            params=params,
            nonzero_params=nonzero,
            size_mb=path.stat().st_size / 2**20,
            checkpoint=str(path.relative_to(pruner.out)),
            seconds=time.perf_counter() - started,
        )
        if pruner.structured:
            row["widths"] = _widths(config.model)
        log.info(
            "amount %.2f: sparsity %.3f, test/acc %.4f%s, %d params, %.2f MB",
            amount,
            row["sparsity"],
            row["test_acc"],
            f" -> {row['test_acc_finetuned']:.4f} after {epochs} epoch(s)" if epochs else "",
            params,
            row["size_mb"],
        )
        rows.append(row)
        modules[f"{amount:.2f}"] = module
    pruner.datamodule.setup("fit")
    batch = next(iter(pruner.datamodule.train_dataloader()))
    seconds = step_timings(modules, batch, cfg.timing)
    for row in rows:
        row["step_ms"] = 1e3 * seconds[f"{row['amount']:.2f}"]
        row["speedup"] = seconds["0.00"] / seconds[f"{row['amount']:.2f}"]
    write_report(pruner.out, rows, cfg, pruner.run_cfg, pruner.ckpt_file, len(batch[1]), COMMAND)
    log.info("Prune report: %s", pruner.out / "report.md")
    return pruner.out


def _widths(model_cfg: DictConfig) -> str:
    if "channels" in model_cfg:
        return f"{list(model_cfg.channels)} / {model_cfg.hidden}"
    return f"{[c for c in model_cfg.cfg if c != 'M']} / {model_cfg.hidden}"


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="prune")
def _hydra_main(cfg: DictConfig) -> None:
    with user_errors_as_messages():
        prune_run(cfg, HydraConfig.get().overrides.task)


def main() -> None:
    """``cnnlab-prune``; ``amount=0.3,0.5`` is read as the list ``amount=[0.3,0.5]``."""
    COMMAND[:] = sys.argv[1:]
    sys.argv[1:] = comma_list_argv(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
