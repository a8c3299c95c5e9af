"""SimSiam and SimSiamHook: the loss against a hand computation, the stop-gradient, the
predictor's fixed lr under the real trainer and lr schedule, errors, the shipped configs and
one epoch through ``selfsup-run``."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from selfsup_core import cli
from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer
from selfsup_core.errors import SelfSupError
from selfsup_core.testing import read_metrics, run_selfsup
from selfsup_models.heads.latent import LatentPredictHead
from torch import nn

from selfsup_siamese.hooks import SimSiamHook
from selfsup_siamese.simsiam import SimSiam

FASHION = "simsiam_resnet18_1xb256-coslr-200e_fashion-mnist.toml"
IMAGENET = "simsiam_resnet50_8xb32-coslr-100e_in1k.toml"
CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
# a width-8 ResNet-18 (64 channels) with small MLPs
TINY_MLPS = {"model.neck.hid_channels": 32, "model.neck.out_channels": 32, "model.head.predictor.in_channels": 32,
             "model.head.predictor.hid_channels": 16, "model.head.predictor.out_channels": 32}


class LinearBackbone(nn.Module):
    """``(N, 2) -> ((N, 2),)``: ``x @ weight.T``, weight initially the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(2, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x @ self.weight.T,)


class FirstOf(nn.Module):
    def forward(self, x: Any) -> list[torch.Tensor]:
        return [x[0]]


class ScalePredictor(nn.Module):
    """``[x] -> [x * diag(1, 2)]``."""

    def forward(self, x: Any) -> list[torch.Tensor]:
        return [x[0] * torch.tensor([1.0, 2.0], dtype=x[0].dtype)]


def hand_simsiam() -> SimSiam:
    return SimSiam(LinearBackbone(), FirstOf(), LatentPredictHead(ScalePredictor()))


V1 = [[3.0, 4.0], [1.0, 0.0]]
V2 = [[4.0, 3.0], [0.0, 2.0]]


def cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (math.hypot(*a) * math.hypot(*b))


def test_simsiam_loss_is_minus_the_mean_cosine() -> None:
    # z = v (identity backbone and neck); p = z * diag(1, 2): p1 = [[3, 8], [1, 0]], p2 = [[4, 6], [0, 4]]
    # D(p1, z2) = mean(-cos([3, 8], [4, 3]), -cos([1, 0], [0, 2])) = mean(-36 / (5 sqrt 73), 0)
    # D(p2, z1) = mean(-cos([4, 6], [3, 4]), -cos([0, 4], [1, 0])) = mean(-36 / (5 sqrt 52), 0)
    # loss = D(p1, z2) / 2 + D(p2, z1) / 2 = -(36 / (5 sqrt 73) + 36 / (5 sqrt 52)) / 4 = -0.46029...
    hand = -(36 / (5 * math.sqrt(73)) + 36 / (5 * math.sqrt(52))) / 4
    p1, p2 = [[3.0, 8.0], [1.0, 0.0]], [[4.0, 6.0], [0.0, 4.0]]
    plain = (-sum(cos(p, z) for p, z in zip(p1, V2)) / 2 - sum(cos(p, z) for p, z in zip(p2, V1)) / 2) / 2
    assert plain == pytest.approx(hand) and hand == pytest.approx(-0.46029, abs=1e-5)
    losses = hand_simsiam()([torch.tensor(V1, dtype=torch.float64), torch.tensor(V2, dtype=torch.float64)])
    assert set(losses) == {"loss"}
    assert losses["loss"].item() == pytest.approx(hand, rel=1e-12)


def test_the_projection_target_carries_no_gradient() -> None:
    views = [torch.tensor(V1, dtype=torch.float64), torch.tensor(V2, dtype=torch.float64)]
    model = hand_simsiam()
    model(views)["loss"].backward()
    got = model.backbone.weight.grad.clone()

    def d(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.cosine_similarity(p, z, dim=1).mean()

    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)

    def reference(stop_gradient: bool) -> torch.Tensor:
        weight = torch.eye(2, dtype=torch.float64, requires_grad=True)
        z1, z2 = views[0] @ weight.T, views[1] @ weight.T
        t1, t2 = (z1.detach(), z2.detach()) if stop_gradient else (z1, z2)
        (d(z1 * scale, t2) / 2 + d(z2 * scale, t1) / 2).backward()
        return weight.grad

    torch.testing.assert_close(got, reference(stop_gradient=True), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, reference(stop_gradient=False))


def test_simsiam_rejects_a_wrong_number_of_views() -> None:
    with pytest.raises(ValueError, match="SimSiam: expects 2 views"):
        hand_simsiam()([torch.ones(2, 2)] * 3)


# -- SimSiamHook under the real trainer --------------------------------------------------------------
class LrRecorder:
    """Records, after every optimizer step (a step post-hook, registered after SimSiamHook's
    pre-hook), the lr each param group was stepped with."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def selfsup_before_run(self, runner: Any) -> None:
        model = runner.model
        self.predictor = {id(p) for p in model.head.predictor.parameters()}

        def record(optimizer: Any, args: Any, kwargs: Any) -> None:
            self.steps.append({
                "iter": runner.iter,
                "groups": [(g["lr"], bool(g.get("fix_lr")), {id(p) in self.predictor for p in g["params"]})
                           for g in optimizer.param_groups],
            })

        self.handle = runner.optimizer.register_step_post_hook(record)

    def selfsup_after_run(self, runner: Any) -> None:
        self.handle.remove()


def run_with_recorder(installed, tiny_config, tmp_path: Path, hook: dict[str, Any]) -> list[dict[str, Any]]:
    recorder = LrRecorder()
    cfg = tiny_config(FASHION, {**TINY_MLPS, "runner.max_epochs": 2, "data.samples_per_gpu": 64,
                                "evaluation.interval": 100, "lr_config.by_epoch": False,
                                "hooks": [hook, {"type": "LrRecorder"}]})
    with installed["hooks"].temporary("LrRecorder", lambda: recorder):
        Trainer(load_config(cfg), work_dir=tmp_path / "run", device="cpu", stream=io.StringIO()).run()
    return recorder.steps


def test_the_predictor_lr_stays_fixed_while_the_rest_follows_the_schedule(installed, tiny_config,
                                                                           tmp_path: Path) -> None:
    steps = run_with_recorder(installed, tiny_config, tmp_path, {"type": "SimSiamHook"})
    assert [s["iter"] for s in steps] == list(range(8))  # 2 epochs x 256 / 64
    for step in steps:
        fixed = [g for g in step["groups"] if g[1]]
        rest = [g for g in step["groups"] if not g[1]]
        # the fix_lr paramwise option gave the predictor, and only it, groups of its own
        assert fixed and all(g[2] == {True} for g in fixed)
        assert rest and all(g[2] == {False} for g in rest)
        # cosine per iteration over K = 8: 0.03 * (cos(pi k / 8) + 1) / 2 for the rest, 0.03 for the predictor
        scheduled = 0.03 * (math.cos(math.pi * step["iter"] / 8) + 1) / 2
        assert all(g[0] == pytest.approx(scheduled, rel=1e-12) for g in rest)
        assert all(g[0] == 0.03 for g in fixed)
    assert steps[-1]["groups"][0][0] < 0.002  # the schedule did go down


class FakeRunner:
    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer


def test_hook_errors() -> None:
    with pytest.raises(ValueError, match="SimSiamHook: lr must be > 0"):
        SimSiamHook(lr=0.0)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(SelfSupError, match="no param group has fix_lr = true; add \\[optimizer.paramwise_options\\]"):
        SimSiamHook().selfsup_before_run(FakeRunner(optimizer))


def test_hook_restores_before_each_step_and_detaches_after_the_run() -> None:
    layer = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [layer.weight], "initial_lr": 0.1},
                                 {"params": [layer.bias], "fix_lr": True, "initial_lr": 0.2}], lr=0.1)
    hook = SimSiamHook()
    runner = FakeRunner(optimizer)
    hook.selfsup_before_run(runner)
    assert optimizer.param_groups[1]["lr"] == 0.2
    for group in optimizer.param_groups:  # what the lr schedule does before a step
        group["lr"] = 0.05
    layer(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.05, 0.2]
    hook.selfsup_after_run(runner)
    optimizer.param_groups[1]["lr"] = 0.05
    optimizer.step()
    assert optimizer.param_groups[1]["lr"] == 0.05  # no longer attached


def test_hook_with_an_explicit_lr_and_switched_off() -> None:
    layer = nn.Linear(2, 2)
    optimizer = torch.optim.SGD([{"params": [layer.weight]}, {"params": [layer.bias], "fix_lr": True}], lr=0.1)
    for group in optimizer.param_groups:
        group["initial_lr"] = 0.1
    SimSiamHook(lr=0.01).selfsup_before_run(FakeRunner(optimizer))
    optimizer.param_groups[1]["lr"] = 0.05
    optimizer.step()
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.01]
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)  # no fix_lr group: no error when switched off
    SimSiamHook(fix_pred_lr=False).selfsup_before_run(FakeRunner(optimizer))
    optimizer.param_groups[0]["lr"] = 0.05
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == 0.05


# -- the shipped configs and one epoch ---------------------------------------------------------------
@pytest.mark.parametrize("name", [FASHION, IMAGENET])
def test_shipped_config_passes_check(installed, name: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([str(CONFIGS / name), "--check"]) == 0
    assert "model SimSiam" in capsys.readouterr().out


def test_one_epoch_through_selfsup_run_lowers_the_loss(tiny_config, tmp_path: Path) -> None:
    # 8 iterations: a high lr makes the fall clear (loss about 0.01 -> -0.3 at seeds 0 and 1; at lr 0.03 it
    # stays near 0)
    cfg = tiny_config(FASHION, {**TINY_MLPS, "optimizer.lr": 1.0})
    work = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", work, "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert (work / "latest.pth").is_file() and (work / "epoch_1.pth").is_file()
    losses = [r["loss"] for r in read_metrics(work, "train")]
    assert len(losses) == 8 and all(-1 <= v <= 1 for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert read_metrics(work, "eval")
