"""Barlow Twins: the loss against hand computations, the cross-correlation summed over two
gloo processes, the shipped configs and one epoch through ``selfsup-run``."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from selfsup_core import cli
from selfsup_core.testing import read_metrics, run_selfsup
from selfsup_models.heads.latent import LatentCrossCorrelationHead
from torch import nn

from selfsup_siamese.barlowtwins import BarlowTwins

FASHION = "barlowtwins_resnet18_1xb256-coslr-200e_fashion-mnist.toml"
IMAGENET = "barlowtwins_resnet50_8xb256-coslr-300e_in1k.toml"
CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
EPS = 1e-5  # the head's batch-norm epsilon


class RowsBackbone(nn.Module):
    """``(N, D) -> ((N, D),)`` times a learnable scalar 1."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x * self.scale,)


class FirstOf(nn.Module):
    def forward(self, x: Any) -> list[torch.Tensor]:
        return [x[0]]


def plain_barlow(a: list[list[float]], b: list[list[float]], lambd: float) -> float:
    """The loss with loops and the math module: columns standardised with the biased variance
    (+ eps), c_ij = sum_n a_ni b_nj / N, loss = sum_i (1 - c_ii)^2 + lambd sum_{i != j} c_ij^2."""
    n, d = len(a), len(a[0])

    def standardise(z: list[list[float]]) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            col = [row[j] for row in z]
            mean = sum(col) / n
            var = sum((x - mean) ** 2 for x in col) / n
            for i in range(n):
                out[i][j] = (z[i][j] - mean) / math.sqrt(var + EPS)
        return out

    an, bn = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(an[k][i] * bn[k][j] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


# columns already standardised (mean 0, biased variance 1): a0 = [1, -1, 1, -1], a1 = [1, 1, -1, -1],
# b0 = b1 = [1, -1, 1, -1]
A = [[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]]
B = [[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]]


def test_barlow_twins_loss_matches_a_hand_computation() -> None:
    # c = a^T b / 4 (times s = 1 / (1 + eps) from the standardisation):
    # c00 = a0.b0 / 4 = 1, c01 = a0.b1 / 4 = 1, c10 = a1.b0 / 4 = 0, c11 = a1.b1 / 4 = 0
    # loss = (1 - c00)^2 + (1 - c11)^2 + lambd (c01^2 + c10^2) = 0 + 1 + lambd  (up to eps)
    s = 1 / (1 + EPS)
    hand = (1 - s) ** 2 + 1 + 0.5 * s**2
    assert plain_barlow(A, B, lambd=0.5) == pytest.approx(hand, rel=1e-12)
    assert hand == pytest.approx(1.5, abs=1e-4)
    model = BarlowTwins(RowsBackbone(), FirstOf(), LatentCrossCorrelationHead(2, lambd=0.5))
    losses = model([torch.tensor(A, dtype=torch.float64), torch.tensor(B, dtype=torch.float64)])
    assert set(losses) == {"loss"}
    assert losses["loss"].item() == pytest.approx(hand, rel=1e-6)  # the head computes in float32


def test_barlow_twins_loss_matches_plain_python_on_random_data() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(5, 3, generator=gen, dtype=torch.float64)
    head = LatentCrossCorrelationHead(3, lambd=0.0051)
    got = head(a, b)["loss"].item()  # computed in float32 inside the head
    assert got == pytest.approx(plain_barlow(a.tolist(), b.tolist(), lambd=0.0051), rel=1e-5)


def test_identical_decorrelated_views_give_zero_loss() -> None:
    model = BarlowTwins(RowsBackbone(), FirstOf(), LatentCrossCorrelationHead(2))
    views = [torch.tensor(A, dtype=torch.float64)] * 2  # a0 . a1 = 0: c = identity (up to eps)
    assert model(views)["loss"].item() == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_trains_the_backbone_and_rejects_one_view() -> None:
    model = BarlowTwins(RowsBackbone(), nn.Sequential(), LatentCrossCorrelationHead(2))
    model.neck = FirstOf()
    with pytest.raises(ValueError, match="BarlowTwins: expects 2 views"):
        model([torch.ones(4, 2)])
    a = torch.tensor(A, dtype=torch.float64) + 0.1 * torch.tensor(B, dtype=torch.float64) ** 3
    model([a, torch.tensor(B, dtype=torch.float64)])["loss"].backward()
    assert model.backbone.scale.grad is not None


# -- the cross-correlation over two processes -----------------------------------------------------
def _worker(rank: int, init_file: str, results: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
        mine_a = a[rank * 4:(rank + 1) * 4].clone().requires_grad_()
        mine_b = b[rank * 4:(rank + 1) * 4].clone()
        loss = LatentCrossCorrelationHead(3, lambd=0.5)(mine_a, mine_b)["loss"]
        loss.backward()
        results[rank] = {"loss": loss.item(), "grad": mine_a.grad.tolist()}
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_cross_correlation_is_summed_over_the_processes_batches(tmp_path: Path) -> None:
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
    # reference in one process: each half standardised by its own batch norm (per-process
    # statistics), c = (a1n^T b1n + a2n^T b2n) / 8 over the global batch of 8
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    a = a.clone().requires_grad_()
    bn = nn.BatchNorm1d(3, affine=False)
    corr = sum(bn(a[r * 4:(r + 1) * 4]).T @ bn(b[r * 4:(r + 1) * 4]) for r in (0, 1)) / 8
    off = corr - torch.diag(torch.diagonal(corr))
    reference = (torch.diagonal(corr) - 1).pow(2).sum() + 0.5 * off.pow(2).sum()
    reference.backward()
    for rank in (0, 1):
        assert results[rank]["loss"] == pytest.approx(reference.item(), rel=1e-5)
        # each process gets the gradient of the global loss with respect to its own samples
        torch.testing.assert_close(torch.tensor(results[rank]["grad"]), a.grad[rank * 4:(rank + 1) * 4],
                                   rtol=1e-4, atol=1e-6)


# -- the shipped configs and one epoch -------------------------------------------------------------
@pytest.mark.parametrize("name", [FASHION, IMAGENET])
def test_shipped_config_passes_check(installed, name: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([str(CONFIGS / name), "--check"]) == 0
    assert "model BarlowTwins" in capsys.readouterr().out


def test_three_epochs_through_selfsup_run_lower_the_loss(tiny_config, tmp_path: Path) -> None:
    # Barlow Twins' loss on batches of 32 with a 64-d projector swings by +-30% from batch
    # to batch, so one epoch of 8 batches says little: compare the first and the last epoch
    cfg = tiny_config(FASHION, {"model.neck.hid_channels": 64, "model.neck.out_channels": 64,
                                "model.head.in_channels": 64, "lr_config.warmup_iters": 1, "runner.max_epochs": 3})
    work = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", work, "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (work / "latest.pth").is_file() and (work / "epoch_3.pth").is_file()
    records = read_metrics(work, "train")
    assert len(records) == 24
    first, last = ([r["loss"] for r in records if r["epoch"] == e] for e in (1, 3))
    assert sum(last) / len(last) < sum(first) / len(first), [round(r["loss"], 1) for r in records]
    assert read_metrics(work, "eval")
