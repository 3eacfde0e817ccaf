"""Hand-written SyncBatchNorm on two gloo processes against ``torch.nn.SyncBatchNorm`` and against
one ``torch.nn.BatchNorm2d`` over the concatenated global batch; and its single-process API."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from layer_testing import BF16_TOL, forbid_builtins
from sync_bn_ranks import CASES, WORLD_SIZE, Case, build, run_rank

import cnnlab.layers as L
from cnnlab.functional.sync_batchnorm import sync_batch_norm
from cnnlab.layers.sync_batchnorm import from_sync_batchnorm, to_sync_batchnorm


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every case run on two gloo processes: ``ranks[rank][case][impl][key]``.

    The ranks are forked, so they inherit the imported modules (spawning re-imports torch,
    seconds on a small machine); what the first guarded backward imports is imported here first
    so that each rank does not pay for it again. Each rank uses one thread, as DataLoader
    workers do, which keeps forking after OpenMP use safe.
    """
    with forbid_builtins():
        (torch.ones(2, requires_grad=True) * 2).sum().backward()
    out = tmp_path_factory.mktemp("sync_bn")
    mp.start_processes(
        run_rank,
        args=(str(out / "rendezvous"), str(out)),
        nprocs=WORLD_SIZE,
        join=True,
        start_method="fork",
    )
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD_SIZE)]


def global_batch_reference(case: Case) -> tuple[dict, list[dict]]:
    """One built-in batch norm over the whole batch: the last step's output, input gradient and
    final buffers, and for each rank the weight/bias gradients of that rank's slice alone."""
    bn = build(case, nn.BatchNorm1d if len(case.spatial) == 1 else nn.BatchNorm2d)
    for step in range(case.steps):
        bn.train(step < len(case.sizes))
        x, g = (t.to(case.dtype) for t in case.batch(step))  # bf16 input: exact float32 math
        before = copy.deepcopy(bn)
        leaf = x.requires_grad_()
        bn.zero_grad()
        out = bn(leaf)
        out.backward(g)
        local: list[dict] = [{} for _ in range(WORLD_SIZE)]
        for rank in range(WORLD_SIZE if bn.affine else 0):
            alone = copy.deepcopy(before)
            mask = torch.zeros_like(g)
            mask[case.rank_slice(step, rank)] = 1
            alone(x.detach()).backward(g * mask)
            local[rank] = {f"grad_{n}": p.grad for n, p in alone.named_parameters()}
    full = {"output": out.detach(), "grad_input": leaf.grad, **bn.state_dict()}
    return full, local


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.torch_reference])
def test_matches_torch_syncbatchnorm(ranks: list[dict], name: str) -> None:
    for rank, results in enumerate(ranks):
        ours, torchs = results[name]["cnnlab"], results[name]["torch"]
        assert ours.keys() == torchs.keys()
        for key, expected in torchs.items():
            assert ours[key].dtype == expected.dtype, key
            torch.testing.assert_close(ours[key], expected, msg=f"rank {rank}: {key}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_batchnorm_on_the_global_batch(ranks: list[dict], name: str) -> None:
    case = CASES[name]
    full, local = global_batch_reference(case)
    tol = BF16_TOL if case.input_dtype == torch.bfloat16 else {}
    ours = [results[name]["cnnlab"] for results in ranks]
    for key in ("output", "grad_input"):
        assert all(r[key].dtype == (case.input_dtype or case.dtype) for r in ours), key
        joined = torch.cat([r[key] for r in ours]).to(full[key].dtype)
        torch.testing.assert_close(joined, full[key], **tol, msg=lambda m, k=key: f"{k}: {m}")
    for rank, result in enumerate(ours):
        for key, expected in local[rank].items():
            assert result[key].dtype == case.dtype
            torch.testing.assert_close(result[key], expected, **tol, msg=f"rank {rank}: {key}")
        for key in full.keys() - {"output", "grad_input"}:
            torch.testing.assert_close(result[key], full[key], **tol, msg=f"rank {rank}: {key}")


def test_every_rank_ran_the_synchronised_path(ranks: list[dict]) -> None:
    """Not a silent fallback: per-rank statistics alone give other running statistics."""
    case = CASES["unequal"]
    x, _ = case.batch(0)
    alone = build(case, nn.BatchNorm2d)
    alone(x[case.rank_slice(0, 0)])
    synced = ranks[0]["unequal"]["cnnlab"]["running_var"]
    assert not torch.allclose(synced, alone.running_var, rtol=1e-3)


# -- one process ------------------------------------------------------------------------------
def test_needs_a_process_group() -> None:
    with pytest.raises(
        RuntimeError, match=r"needs an initialised torch\.distributed process group"
    ):
        sync_batch_norm(torch.randn(4, 3, 2, 2), None, None)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((3,), r"SyncBatchNorm\(3\) expected an \(N, C, \.\.\.\) input of at least 2 dimensions"),
        ((4, 2, 5), r"SyncBatchNorm\(3\) expected 3 channels, got 2"),
    ],
)
def test_errors_name_the_layer(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        L.SyncBatchNorm(3)(torch.randn(shape))


def test_drop_in_constructor_state_dict_and_repr() -> None:
    ours = L.SyncBatchNorm(8, eps=1e-3, momentum=None, affine=False, process_group=None)
    theirs = nn.SyncBatchNorm(8, eps=1e-3, momentum=None, affine=False, process_group=None)
    assert repr(ours) == repr(theirs)
    assert vars(ours).keys() == vars(theirs).keys()
    ours.load_state_dict(theirs.state_dict())
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_convert_sync_batchnorm_swaps_only_the_hand_written_batch_norms() -> None:
    model = nn.Sequential(L.BatchNorm2d(3), nn.BatchNorm2d(3), L.Conv2d(3, 3, 1))
    weight = model[0].weight
    converted = L.SyncBatchNorm.convert_sync_batchnorm(model, process_group=None)
    assert [type(m) for m in converted] == [L.SyncBatchNorm, nn.BatchNorm2d, L.Conv2d]
    assert converted[0].weight is weight and converted[0].process_group is None


def test_to_and_from_sync_batchnorm_restore_every_class_and_tensor() -> None:
    model = nn.Sequential(
        L.BatchNorm2d(3), nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.ReLU()
    ).double()
    before = [(type(m), vars(m).copy()) for m in model]
    model, originals = to_sync_batchnorm(model)
    expected = [L.SyncBatchNorm, *[nn.SyncBatchNorm] * 3, nn.ReLU]
    assert [type(m) for m in model] == expected
    assert all(m.process_group is None for m in model[:4])
    model = from_sync_batchnorm(model, originals)
    assert [type(m) for m in model] == [cls for cls, _ in before]
    for module, (_, state) in zip(model, before, strict=True):
        assert vars(module).keys() == state.keys()
        assert all(module._parameters[k] is v for k, v in state["_parameters"].items())
        assert all(module._buffers[k] is v for k, v in state["_buffers"].items())
