"""DINO/iBOT components: head shapes and the ViT-S/16 size, the DINOHook's schedules and
gradient handling, the blockwise mask sampler, and the algorithms' wiring on tiny inputs."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from selfsup_models.backbones.resnet import ResNet
from selfsup_models.backbones.vision_transformer import VisionTransformer
from torch import nn

from selfsup_distill.dino import DINO
from selfsup_distill.heads import DINOHead, DINONeck, iBOTHead
from selfsup_distill.hooks import DINOHook, clip_per_parameter_
from selfsup_distill.ibot import iBOT
from selfsup_distill.masks import BlockMaskSampler


def tiny_vit(**kwargs) -> VisionTransformer:
    arch = {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32}
    return VisionTransformer(arch=arch, img_size=16, patch_size=4, in_channels=1, **kwargs)


def tiny_dino(backbone: nn.Module | None = None, out: int = 10) -> DINO:
    torch.manual_seed(0)
    if backbone is None:
        backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar",
                          norm_cfg={"type": "BN"})
    width = 32 if isinstance(backbone, ResNet) else 16
    return DINO(backbone, DINONeck(width, 12, 6), DINOHead(6, out))


def views(batch: int = 3, sizes=(16, 16, 8, 8, 8)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, s, s, generator=generator) for s in sizes]


# -- shapes ----------------------------------------------------------------------------------------
def test_vit_small_16_and_its_dino_head_have_the_papers_sizes() -> None:
    vit = VisionTransformer(arch="small", img_size=224, patch_size=16)
    count = sum(p.numel() for p in vit.parameters())
    assert abs(count - 21.67e6) < 0.05e6, count
    neck, head = DINONeck(384, 2048, 256), DINOHead(256, 65536)
    linears = [m for m in neck.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 2048), (2048, 2048), (2048, 256)]
    assert [type(m).__name__ for m in neck.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert head.last_layer.weight_v.shape == (65536, 256) and head.last_layer.weight_g.shape == (65536, 1)
    assert not head.last_layer.weight_g.requires_grad  # norm_last_layer = true: frozen norm
    assert DINOHead(256, 16, norm_last_layer=False).last_layer.weight_g.requires_grad


def test_neck_normalises_the_bottleneck_and_the_last_layer_is_weight_normalised() -> None:
    neck, head = DINONeck(8, 16, 4), DINOHead(4, 5)
    z = neck([torch.randn(3, 8, 2, 2)])[0]  # a ResNet map: global average pooled
    assert z.shape == (3, 4) and torch.allclose(z.norm(dim=1), torch.ones(3))
    cls = neck((([torch.randn(3, 8, 2, 2), torch.randn(3, 8)]),))[0]  # a ViT output: the class token
    assert cls.shape == (3, 4)
    assert torch.allclose(head.last_layer.weight().norm(dim=1), torch.ones(5))
    assert torch.allclose(head(z), z @ head.last_layer.weight().T)


# -- the algorithm ---------------------------------------------------------------------------------
def test_dino_teacher_sees_global_views_student_every_view_and_ema_follows() -> None:
    model = tiny_dino()
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    model.target_backbone.register_forward_hook(lambda m, i, o: calls.append(("teacher", *i[0].shape)))
    out = model(views(), mode="train")
    assert calls == [("teacher", 6, 1, 16, 16), (6, 1, 16, 16), (9, 1, 8, 8)]
    out["loss"].backward()
    assert model.backbone.conv1.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.target_backbone.parameters())
    with torch.no_grad():
        model.backbone.conv1.weight.add_(1.0)
    before = model.target_backbone.conv1.weight.clone()
    model.momentum = 0.9
    model.momentum_update()
    assert torch.allclose(model.target_backbone.conv1.weight, 0.9 * before + 0.1 * model.backbone.conv1.weight)


def test_teacher_momentum_follows_the_cores_cosine_from_0996_to_1() -> None:
    from selfsup_core.api import MomentumUpdate

    model = tiny_dino()
    hook = MomentumUpdate(end_momentum=1.0)
    runner = SimpleNamespace(model=model, iter=0, max_iters=100, is_update_step=True)
    hook.selfsup_before_run(runner)
    for it, expected in ((0, 0.996), (50, 0.998), (100, 1.0)):
        runner.iter = it
        hook.selfsup_before_iter(runner)
        assert model.momentum == pytest.approx(expected)


def test_ibot_masks_the_student_global_views_only() -> None:
    torch.manual_seed(0)
    model = iBOT(tiny_vit(use_mask_token=True), DINONeck(16, 12, 6), iBOTHead(6, 10), mask_prob=1.0)
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, a, k: seen.append(k.get("mask")), with_kwargs=True)
    out = model(views(batch=2), mode="train")
    assert set(out) == {"loss_cls", "loss_patch", "teacher_entropy", "teacher_batch_entropy"}
    masks, local_masks = seen[0], seen[1:]
    assert local_masks == [None]  # one call for the local views (one size), unmasked
    assert masks.shape == (4, 4, 4) and masks.dtype == torch.bool and bool(masks.flatten(1).any(1).all())
    (out["loss_cls"] + out["loss_patch"]).backward()
    assert model.backbone.mask_token.grad is not None and model.backbone.mask_token.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="use_mask_token = true"):
        iBOT(tiny_vit(), DINONeck(16, 12, 6), iBOTHead(6, 10))


def test_block_mask_ratio_stays_within_its_bounds() -> None:
    sampler = BlockMaskSampler((14, 14), (0.1, 0.5), mask_prob=0.5, rng=random.Random(0))
    masks = sampler(400)
    counts = masks.flatten(1).sum(1)
    masked = counts[counts > 0]
    assert 150 < len(masked) < 250  # about half of the images are masked
    assert int(masked.max()) <= int(0.5 * 196)
    assert int(masked.min()) >= 1
    assert float(masked.float().mean()) / 196 == pytest.approx(0.3, abs=0.06)
    always = BlockMaskSampler((14, 14), (0.3, 0.3), mask_prob=1.0, rng=random.Random(1))(50).flatten(1).sum(1)
    assert int(always.max()) <= int(0.3 * 196) and float(always.float().mean()) > 0.8 * 0.3 * 196
    with pytest.raises(ValueError, match="ratio_range"):
        BlockMaskSampler((14, 14), (0.5, 0.1))


# -- the hook --------------------------------------------------------------------------------------
def runner_for(model: nn.Module, **state) -> SimpleNamespace:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    other = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.04}, {"params": other, "weight_decay": 0.0}])
    values = {"model": model, "optimizer": optimizer, "epoch": 0, "iter": 0, "max_iters": 100, "is_update_step": True}
    return SimpleNamespace(**{**values, **state})


def test_hook_freezes_the_last_layer_in_the_first_epoch_only() -> None:
    model = tiny_dino()
    model.head.last_layer.weight_g.requires_grad_(True)
    hook = DINOHook(clip_grad=0.0, freeze_last_layer=1)
    runner = runner_for(model)
    hook.selfsup_before_run(runner)
    model(views(), mode="train")["loss"].backward()
    hook.selfsup_after_backward(runner)
    assert model.head.last_layer.weight_v.grad is None and model.head.last_layer.weight_g.grad is None
    assert model.neck.mlp[0].weight.grad is not None
    runner.epoch = 1
    hook.selfsup_before_epoch(runner)
    assert model.epoch == 1
    model(views(), mode="train")["loss"].backward()
    hook.selfsup_after_backward(runner)
    assert model.head.last_layer.weight_v.grad is not None


def test_per_parameter_clipping_bounds_each_tensor_on_its_own() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    a.grad = torch.tensor([3.0, 4.0])   # norm 5 -> clipped to 3
    b.grad = torch.tensor([1.0, 0.0, 0.0])  # norm 1 -> unchanged
    assert clip_per_parameter_([a, b], 3.0).tolist() == pytest.approx([5.0, 1.0])
    assert a.grad.tolist() == pytest.approx([3.0 * 3 / (5 + 1e-6), 4.0 * 3 / (5 + 1e-6)])
    assert b.grad.tolist() == [1.0, 0.0, 0.0]
    model = tiny_dino()
    runner = runner_for(model, epoch=1)
    hook = DINOHook(clip_grad=0.01)
    hook.selfsup_before_run(runner)
    model(views(), mode="train")["loss"].backward()
    hook.selfsup_after_backward(runner)
    norms = [float(p.grad.norm()) for p in model.parameters() if p.grad is not None]
    assert max(norms) <= 0.01 + 1e-6 and len(norms) > 10


def test_weight_decay_follows_a_cosine_from_the_configured_value_to_the_end() -> None:
    model = tiny_dino()
    runner = runner_for(model)
    hook = DINOHook(weight_decay_end=0.4)
    hook.selfsup_before_run(runner)
    for it, expected in ((0, 0.04), (50, 0.22), (100, 0.4)):
        runner.iter = it
        hook.selfsup_before_iter(runner)
        decay, other = runner.optimizer.param_groups
        assert decay["weight_decay"] == pytest.approx(expected) and other["weight_decay"] == 0.0
