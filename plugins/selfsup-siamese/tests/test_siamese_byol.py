"""BYOL: the loss against hand computations, the target network (no gradient, EMA rule,
scheduled momentum through the real trainer with gradient accumulation), config errors,
the shipped configs and one epoch through ``selfsup-run``."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from selfsup_core import cli
from selfsup_core.build import build
from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer
from selfsup_core.errors import ConfigError
from selfsup_core.testing import read_metrics, run_selfsup
from selfsup_models.heads.latent import LatentPredictHead
from torch import nn

from selfsup_siamese.byol import BYOL

FASHION = "byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml"
IMAGENET = "byol_resnet50_8xb32-accum16-coslr-200e_in1k.toml"
CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


class LinearBackbone(nn.Module):
    """``(N, 2) -> ((N, 2),)``: ``x @ weight.T``, weight initially the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x @ self.weight.T,)


class FirstOf(nn.Module):
    """A neck/predictor without weights: ``[x[0]]``."""

    def forward(self, x: Any) -> list[torch.Tensor]:
        return [x[0]]


def hand_byol() -> BYOL:
    return BYOL(LinearBackbone(), FirstOf(), LatentPredictHead(FirstOf()))


def two_minus_two_cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return 2 - 2 * dot / (math.hypot(*a) * math.hypot(*b))


# -- the loss ------------------------------------------------------------------------------------
def test_latent_predict_head_is_normalised_mse() -> None:
    # q = [3, 4], t = [4, 3]: cos = 24 / 25 -> 2 - 48/25 = 0.08; q = [1, 0], t = [0, 2]: cos 0 -> 2
    # the batch mean: (0.08 + 2) / 2 = 1.04; the target scale does not matter (t = [0, 2] vs [0, 1])
    head = LatentPredictHead(FirstOf())
    loss = head(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[4.0, 3.0], [0.0, 2.0]]))["loss"]
    assert loss.item() == pytest.approx(1.04, rel=1e-6)
    # = mean || q/|q| - t/|t| ||^2: [0.6, 0.8] - [0.8, 0.6] -> 0.04 + 0.04 = 0.08
    assert ((0.6 - 0.8) ** 2 + (0.8 - 0.6) ** 2 + 2.0) / 2 == pytest.approx(1.04)


def test_byol_loss_pairs_each_online_view_with_the_other_views_target() -> None:
    model = hand_byol()
    with torch.no_grad():
        model.target_backbone.weight.copy_(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64)))
    v1 = [[3.0, 4.0], [1.0, 0.0]]
    v2 = [[4.0, 3.0], [0.0, 2.0]]
    # online z = v (identity weights, identity neck and predictor); target t = v * diag(1, 2):
    # t1 = [[3, 8], [1, 0]], t2 = [[4, 6], [0, 4]]
    # head(z1, t2) = mean(2 - 2 * 36 / (5 sqrt 52), 2 - 0) and head(z2, t1) = mean(2 - 2 * 36 / (5 sqrt 73), 2 - 0)
    # -> loss = 4 - 36 / (5 sqrt 52) - 36 / (5 sqrt 73) = 2.15884...
    hand = 4 - 36 / (5 * math.sqrt(52)) - 36 / (5 * math.sqrt(73))
    t1, t2 = [[3.0, 8.0], [1.0, 0.0]], [[4.0, 6.0], [0.0, 4.0]]
    plain = (sum(two_minus_two_cos(z, t) for z, t in zip(v1, t2)) / 2
             + sum(two_minus_two_cos(z, t) for z, t in zip(v2, t1)) / 2)
    assert plain == pytest.approx(hand) and hand == pytest.approx(2.15884, abs=1e-5)
    views = [torch.tensor(v1, dtype=torch.float64), torch.tensor(v2, dtype=torch.float64)]
    losses = model(views, mode="train")
    assert set(losses) == {"loss"}
    assert losses["loss"].item() == pytest.approx(hand, rel=1e-12)


def test_byol_rejects_a_wrong_number_of_views() -> None:
    with pytest.raises(ValueError, match="BYOL: expects 2 views"):
        hand_byol()([torch.ones(2, 2)], mode="train")


# -- the target network --------------------------------------------------------------------------
def small_byol(**kwargs: Any) -> BYOL:
    table = {
        "type": "BYOL", **kwargs,
        "backbone": {"type": "ResNet", "depth": 18, "in_channels": 1, "stem_type": "cifar",
                     "base_channels": 4, "stem_channels": 4},
        "neck": {"type": "NonLinearNeck", "in_channels": 32, "hid_channels": 16, "out_channels": 8,
                 "with_bias": True, "with_last_bn": False, "norm_cfg": {"type": "BN"}},
        "head": {"type": "LatentPredictHead",
                 "predictor": {"type": "NonLinearNeck", "in_channels": 8, "hid_channels": 16, "out_channels": 8,
                               "with_bias": True, "with_last_bn": False, "with_avg_pool": False,
                               "norm_cfg": {"type": "BN"}}},
    }
    return build(table, "algorithms")


def target_and_online(model: BYOL) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    target = [*model.target_backbone.parameters(), *model.target_neck.parameters()]
    online = [*model.backbone.parameters(), *model.neck.parameters()]
    return target, online


def test_target_starts_equal_and_gets_no_gradient(installed) -> None:
    torch.manual_seed(0)
    model = small_byol()
    target, online = target_and_online(model)
    assert len(target) == len(online) > 0
    assert all(torch.equal(t, o) for t, o in zip(target, online))
    assert not any(t.requires_grad for t in target)
    views = [torch.randn(4, 1, 12, 12), torch.randn(4, 1, 12, 12)]
    model(views, mode="train")["loss"].backward()
    assert all(t.grad is None for t in target)
    assert all(o.grad is not None for o in online)
    assert any(p.grad.abs().sum() > 0 for p in model.head.predictor.parameters())
    # the optimizer never sees the target: only trainable parameters are optimised
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert not trainable & {id(t) for t in target}


def test_momentum_update_is_the_ema_rule(installed) -> None:
    torch.manual_seed(0)
    model = small_byol(base_momentum=0.9)
    target, online = target_and_online(model)
    with torch.no_grad():  # make online and target differ
        for p in online:
            p.add_(torch.randn_like(p))
    before = [t.clone() for t in target]
    buffers = [b.clone() for b in model.target_backbone.buffers()]
    model.momentum = 0.75
    model.momentum_update()
    for t, old, o in zip(target, before, online):
        torch.testing.assert_close(t, 0.75 * old + 0.25 * o, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(b, old) for b, old in zip(model.target_backbone.buffers(), buffers))
    assert model.base_momentum == 0.9  # the hook changes momentum, never base_momentum


class MomentumRecorder:
    """Listed after MomentumUpdate: records the momentum the hook set and the EMA it applied."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def selfsup_before_iter(self, runner: Any) -> None:
        target, _ = target_and_online(runner.model)
        self.before = [t.detach().clone() for t in target]
        self.momentum = runner.model.momentum

    def selfsup_after_iter(self, runner: Any, outputs: Any) -> None:
        target, online = target_and_online(runner.model)
        m = self.momentum
        expected = [m * old + (1 - m) * o.detach() for old, o in zip(self.before, online)]
        self.records.append({
            "iter": runner.iter, "max_iters": runner.max_iters, "momentum": m, "update": runner.is_update_step,
            "ema_error": max((t - e).abs().max().item() for t, e in zip(target, expected)),
            "unchanged": all(torch.equal(t, old) for t, old in zip(target, self.before)),
        })


def test_trainer_schedules_the_momentum_and_updates_the_target_after_each_step(
        installed, tiny_config, tmp_path: Path) -> None:
    recorder = MomentumRecorder()
    cfg = tiny_config(FASHION, {"optimizer_config.accumulate_steps": 2, "data.samples_per_gpu": 64,
                                "model.base_momentum": 0.9, "evaluation.interval": 100,
                                "model.neck.hid_channels": 32, "model.neck.out_channels": 16,
                                "model.head.predictor.in_channels": 16, "model.head.predictor.hid_channels": 32,
                                "model.head.predictor.out_channels": 16,
                                "hooks": [{"type": "MomentumUpdate", "end_momentum": 1.0}, {"type": "Recorder"}]})
    with installed["hooks"].temporary("Recorder", lambda: recorder):
        Trainer(load_config(cfg), work_dir=tmp_path / "run", device="cpu", stream=io.StringIO()).run()
    records = recorder.records
    assert [r["iter"] for r in records] == [0, 1, 2, 3]  # 256 images / 64
    assert [r["update"] for r in records] == [False, True, False, True]  # accumulate_steps = 2
    for r in records:
        # m = 1 - (1 - 0.9) * (cos(pi k / K) + 1) / 2 with K = 4: 0.9, 0.9146..., 0.95, 0.9853...
        hand = 1 - 0.1 * (math.cos(math.pi * r["iter"] / 4) + 1) / 2
        assert r["momentum"] == pytest.approx(hand, abs=1e-12)
        if r["update"]:
            assert r["ema_error"] < 1e-6 and not r["unchanged"]
        else:
            assert r["unchanged"]  # no optimizer step: the target does not move
    assert records[0]["momentum"] == pytest.approx(0.9) and records[2]["momentum"] == pytest.approx(0.95)


# -- config errors and the shipped configs -------------------------------------------------------
def test_config_errors(installed) -> None:
    with pytest.raises(ConfigError, match="base_momentum must be in"):
        small_byol(base_momentum=1.5)
    with pytest.raises(ConfigError, match="missing required argument 'head'"):
        build({"type": "BYOL", "backbone": {"type": "ResNet", "depth": 18},
               "neck": {"type": "NonLinearNeck", "in_channels": 512, "hid_channels": 8, "out_channels": 8}},
              "algorithms", path="model")


@pytest.mark.parametrize("name", [FASHION, IMAGENET])
def test_shipped_config_passes_check(installed, name: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([str(CONFIGS / name), "--check"]) == 0
    assert "model BYOL" in capsys.readouterr().out


# -- one epoch through selfsup-run -----------------------------------------------------------------
def test_one_epoch_through_selfsup_run_lowers_the_loss(tiny_config, tmp_path: Path) -> None:
    # 8 iterations at lr 1.0 (loss about 4.05 -> 3.5 at seeds 0 and 1)
    cfg = tiny_config(FASHION, {"lr_config.warmup_iters": 1, "optimizer.lr": 1.0})
    work = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", work, "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (work / "latest.pth").is_file() and (work / "epoch_1.pth").is_file()
    losses = [r["loss"] for r in read_metrics(work, "train")]
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert read_metrics(work, "eval")  # the online kNN ran after the last epoch
