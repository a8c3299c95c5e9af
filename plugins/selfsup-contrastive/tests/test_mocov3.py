"""MoCo v3: the symmetric loss against a hand computation, the momentum encoder (no gradient,
EMA rule, cosine schedule through the core's MomentumUpdate hook), a ViT with a frozen patch
projection, config errors, and one epoch of the shipped Fashion-MNIST config through
``selfsup-run``."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from selfsup_core.engine.hooks import MomentumUpdate
from selfsup_models.backbones import ResNet, VisionTransformer
from selfsup_models.heads import MoCoV3Head
from selfsup_models.necks import NonLinearNeck
from torch import nn

from selfsup_contrastive.mocov3 import MoCoV3

FASHION = "mocov3_resnet18_1xb256-coslr-200e_fashion-mnist.toml"


class FirstOfList(nn.Module):
    """An identity predictor: ``[x] -> [x]``."""

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x[0]]


# Two images a, b; base-encoder projections q (view 1, view 2) and momentum keys k:
#   q1 = [1, 0], [0, 1]      q2 = [0.6, 0.8], [1, 0]
#   k1 = [0.8, 0.6], [0, 1]  k2 = [0, 1], [0.6, 0.8]
# head(q1, k2), T = 0.5: logits a = [0, 0.6] / 0.5 = [0, 1.2] (label 0) -> log(1 + e^1.2) = 1.463282;
#   b = [1, 0.8] / 0.5 = [2, 1.6] (label 1) -> log(1 + e^0.4) = 0.913015; mean 1.188149, x 2T = 1.188149
# head(q2, k1): a = [0.96, 0.8] / 0.5 = [1.92, 1.6] (label 0) -> log(1 + e^-0.32) = 0.546295;
#   b = [0.8, 0] / 0.5 = [1.6, 0] (label 1) -> log(1 + e^1.6) = 1.783499; mean 1.164897
# symmetric loss 1.188149 + 1.164897 = 2.353046
Q1, Q2 = [[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.8], [1.0, 0.0]]
K1, K2 = [[0.8, 0.6], [0.0, 1.0]], [[0.0, 1.0], [0.6, 0.8]]
HAND_LOSS = 2.353046


def plain_python_head(q: list[list[float]], k: list[list[float]], t: float) -> float:
    """2T x cross-entropy of cos(q_i, k_j) / T with the positive at j = i (math module only)."""
    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    q, k = [unit(v) for v in q], [unit(v) for v in k]
    total = 0.0
    for i, qi in enumerate(q):
        logits = [sum(a * b for a, b in zip(qi, kj)) / t for kj in k]
        total += -math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits))
    return 2 * t * total / len(q)


def test_symmetric_loss_matches_hand_computation() -> None:
    head = MoCoV3Head(FirstOfList(), temperature=0.5)
    t = lambda rows: torch.tensor(rows, dtype=torch.float64)  # noqa: E731
    loss = head(t(Q1), t(K2))["loss"] + head(t(Q2), t(K1))["loss"]
    assert loss.item() == pytest.approx(HAND_LOSS, abs=1e-6)
    assert plain_python_head(Q1, K2, 0.5) + plain_python_head(Q2, K1, 0.5) == pytest.approx(HAND_LOSS, abs=1e-6)


def small_mocov3(backbone: nn.Module | None = None, in_channels: int = 32) -> MoCoV3:
    backbone = backbone or ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
    vit = isinstance(backbone, VisionTransformer)
    neck = NonLinearNeck(in_channels, 16, 8, with_last_bn_affine=False, with_avg_pool=not vit, vit_backbone=vit,
                         norm_cfg={"type": "BN"})
    predictor = NonLinearNeck(8, 16, 8, with_last_bn_affine=False, with_avg_pool=False, norm_cfg={"type": "BN"})
    return MoCoV3(backbone, neck, MoCoV3Head(predictor, temperature=0.2), base_momentum=0.9)


def views(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 28, 28, generator=g), torch.randn(n, 1, 28, 28, generator=g)]


def test_forward_train_is_the_symmetric_head_loss_of_its_encoders() -> None:
    torch.manual_seed(0)
    model = small_mocov3()
    v1, v2 = views()
    loss = model([v1, v2], mode="train")["loss"]
    with torch.no_grad():
        p = lambda x: model.head.predictor([model.neck(model.backbone(x))[0]])[0]  # noqa: E731
        k = lambda x: model.momentum_encoder(x)[0]  # noqa: E731
        expected = plain_python_head(p(v1).tolist(), k(v2).tolist(), 0.2) + \
            plain_python_head(p(v2).tolist(), k(v1).tolist(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-4)


def test_momentum_encoder_gets_no_gradient_and_follows_the_ema_rule() -> None:
    torch.manual_seed(0)
    model = small_mocov3()
    for target, online in zip(model.momentum_encoder.parameters(), model.base_encoder().parameters()):
        assert torch.equal(target, online)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(views(), mode="train")["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.momentum_encoder.parameters())
    assert model.head.predictor.fc0.weight.grad.abs().sum() > 0
    opt.step()
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    online = [p.detach().clone() for p in model.base_encoder().parameters()]
    model.momentum = 0.75
    model.momentum_update()
    for after, b, o in zip(model.momentum_encoder.parameters(), before, online):
        torch.testing.assert_close(after, 0.75 * b + 0.25 * o)


def test_momentum_update_hook_applies_the_cosine_schedule() -> None:
    """base 0.9 -> 1.0 over 4 iterations: m(0) = 0.9, m(2) = 1 - 0.1 * (cos(pi/2) + 1) / 2 = 0.95."""
    model = small_mocov3()
    hook = MomentumUpdate(end_momentum=1.0)
    runner = SimpleNamespace(model=model, iter=0, max_iters=4, is_update_step=True)
    hook.selfsup_before_run(runner)
    hook.selfsup_before_iter(runner)
    assert model.momentum == pytest.approx(0.9)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.momentum_encoder.parameters()]
    online = [p.detach().clone() for p in model.base_encoder().parameters()]
    runner.iter = 2
    hook.selfsup_before_iter(runner)
    assert model.momentum == pytest.approx(0.95)
    hook.selfsup_after_iter(runner, {})
    for after, b, o in zip(model.momentum_encoder.parameters(), before, online):
        torch.testing.assert_close(after, 0.95 * b + 0.05 * o)


def test_vit_backbone_with_a_frozen_patch_projection() -> None:
    torch.manual_seed(0)
    vit = VisionTransformer(arch={"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32},
                            img_size=28, patch_size=7, in_channels=1, stop_grad_conv1=True, pos_embed_type="sincos")
    model = small_mocov3(vit, in_channels=16)
    loss = model(views(), mode="train")["loss"]
    loss.backward()
    assert math.isfinite(loss.item())
    assert vit.patch_embed.proj.weight.grad is None and not vit.patch_embed.proj.weight.requires_grad
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.momentum_encoder[0].patch_embed.proj.weight.requires_grad is False


def test_errors() -> None:
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
    with pytest.raises(ValueError, match="MoCoV3: base_momentum must be in \\[0, 1\\]"):
        MoCoV3(backbone, nn.Identity(), nn.Identity(), base_momentum=2.0)
    with pytest.raises(ValueError, match="MoCoV3: expects 2 views"):
        small_mocov3()(views()[:1], mode="train")


def test_one_epoch_of_the_fashion_config_lowers_the_loss(run_one_epoch) -> None:
    # 16 iterations of 16 images at a constant lr (warm-up from the full lr) and a fast-moving
    # momentum encoder: the in-batch loss starts near chance (2 x 0.2 x log 16 x 2 = 2.2)
    values = {"model.neck.in_channels": 64, "data.samples_per_gpu": 16, "optimizer.lr": 3.0,
              "lr_config.warmup_iters": 1, "lr_config.warmup_ratio": 1.0, "model.head.temperature": 0.2,
              "model.base_momentum": 0.9}
    _, losses = run_one_epoch(FASHION, values)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
