"""DINO's and iBOT's losses, centre and schedules against hand computations."""
from __future__ import annotations

import math

import pytest
import torch

from selfsup_distill.heads import DINOHead, dino_loss, iBOTHead, ibot_patch_loss, updated_center
from selfsup_distill.schedules import cosine_schedule, teacher_temperature


def softmax(xs: list[float]) -> list[float]:
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def cross_entropy(p: list[float], logits: list[float]) -> float:
    """sum_k -p_k log softmax(logits)_k."""
    q = softmax(logits)
    return -sum(pk * math.log(qk) for pk, qk in zip(p, q))


def test_dino_loss_centres_sharpens_and_skips_same_view_pairs() -> None:
    # one image, K = 3, two global views (teacher) and three student views (2 global + 1 local)
    teacher = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]
    student = [[0.2, 0.1, 0.0], [0.0, 0.3, -0.2], [1.0, -1.0, 0.5]]
    center = [0.1, -0.2, 0.3]
    tt, ts = 0.04, 0.1
    expected = 0.0
    pairs = 0
    for q, t in enumerate(teacher):
        p = softmax([(a - c) / tt for a, c in zip(t, center)])
        for v, s in enumerate(student):
            if v == q:
                continue  # the same crop: skipped
            expected += cross_entropy(p, [x / ts for x in s])
            pairs += 1
    expected /= pairs
    assert pairs == 4
    got = dino_loss([torch.tensor([s]) for s in student], [torch.tensor([t]) for t in teacher],
                    torch.tensor([center]), ts, tt)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_averages_over_the_batch() -> None:
    torch.manual_seed(0)
    student = [torch.randn(4, 5) for _ in range(3)]
    teacher = [torch.randn(4, 5) for _ in range(2)]
    center = torch.zeros(1, 5)
    per_image = [dino_loss([s[i:i + 1] for s in student], [t[i:i + 1] for t in teacher], center, 0.1, 0.05)
                 for i in range(4)]
    assert dino_loss(student, teacher, center, 0.1, 0.05).item() == pytest.approx(
        sum(x.item() for x in per_image) / 4, rel=1e-5)


def test_center_update_is_an_ema_of_the_teacher_batch_mean() -> None:
    center = torch.tensor([[1.0, 2.0]])
    teacher = torch.tensor([[3.0, 0.0], [5.0, 4.0]])  # batch mean [4, 2]
    new = updated_center(center, teacher, 0.9)
    assert new.flatten().tolist() == pytest.approx([0.9 * 1 + 0.1 * 4, 0.9 * 2 + 0.1 * 2])
    head = DINOHead(in_channels=2, out_channels=2, center_momentum=0.9)
    head.center.copy_(center)
    head.loss([torch.zeros(2, 2)] * 3, [teacher[:1], teacher[1:]], epoch=0)
    assert head.center.flatten().tolist() == pytest.approx([1.3, 2.0])


def test_teacher_temperature_warm_up_is_linear_over_30_epochs_then_constant() -> None:
    head = DINOHead(in_channels=4, out_channels=8)  # 0.04 -> 0.07 over 30 epochs
    assert head.teacher_temp_at(0) == pytest.approx(0.04)
    assert head.teacher_temp_at(1) == pytest.approx(0.04 + 0.03 / 29)
    assert head.teacher_temp_at(15) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert head.teacher_temp_at(29) == pytest.approx(0.07)
    assert head.teacher_temp_at(30) == pytest.approx(0.07)
    assert head.teacher_temp_at(99) == pytest.approx(0.07)
    assert teacher_temperature(5, 0.04, 0.04, 0) == 0.04
    # the loss uses the epoch's temperature
    teacher = [torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])] * 2
    student = [torch.zeros(1, 8)] * 2
    head.loss(student, teacher, epoch=15)  # moves the centre; compare with a fresh head
    fresh = DINOHead(in_channels=4, out_channels=8)
    expected = dino_loss(student, teacher, torch.zeros(1, 8), 0.1, 0.04 + 0.03 * 15 / 29)
    assert fresh.loss(student, teacher, epoch=15)["loss"].item() == pytest.approx(expected.item())


def test_cosine_schedules_of_momentum_and_weight_decay() -> None:
    assert cosine_schedule(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_schedule(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(25, 100, 0.04, 0.4) == pytest.approx(0.4 - 0.36 * (1 + math.cos(math.pi / 4)) / 2)


def test_ibot_patch_loss_counts_masked_positions_only() -> None:
    # one view, two images, L = 2 tokens, K = 2
    s = torch.tensor([[[0.0, 1.0], [2.0, 0.0]], [[1.0, 1.0], [0.0, 3.0]]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [5.0, 5.0]]])
    m = torch.tensor([[1, 0], [0, 0]])  # image 0: token 0 masked; image 1: nothing masked
    center = torch.tensor([[[0.5, 0.0]]])
    tt, ts = 0.07, 0.1
    ce00 = cross_entropy(softmax([(1.0 - 0.5) / tt, 0.0 / tt]), [0.0 / ts, 1.0 / ts])
    expected = (ce00 / 1 + 0.0) / 2  # per-image mean over masked tokens, then over images
    got = ibot_patch_loss([s], [t], [m], center, ts, tt)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # two views: the mean of the two views' losses
    m2 = torch.tensor([[1, 1], [0, 1]])
    second = ibot_patch_loss([s], [t], [m2], center, ts, tt)
    assert ibot_patch_loss([s, s], [t, t], [m, m2], center, ts, tt).item() == pytest.approx(
        (got.item() + second.item()) / 2, rel=1e-5)


def test_ibot_head_weights_both_losses_and_updates_both_centres() -> None:
    head = iBOTHead(in_channels=2, out_channels=3, lambda_cls=1.0, lambda_patch=0.5)
    torch.manual_seed(0)
    cls_s = [torch.randn(2, 3) for _ in range(3)]
    cls_t = [torch.randn(2, 3) for _ in range(2)]
    patch_s = [torch.randn(2, 4, 3) for _ in range(2)]
    patch_t = [torch.randn(2, 4, 3) for _ in range(2)]
    masks = [torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0]]), torch.tensor([[1, 1, 1, 1], [0, 1, 0, 0]])]
    out = head.ibot_loss(cls_s, patch_s, cls_t, patch_t, masks, epoch=0)
    assert out["loss_cls"].item() == pytest.approx(dino_loss(cls_s, cls_t, torch.zeros(1, 3), 0.1, 0.04).item())
    assert out["loss_patch"].item() == pytest.approx(
        0.5 * ibot_patch_loss(patch_s, patch_t, masks, torch.zeros(1, 1, 3), 0.1, 0.04).item())
    assert head.center_patch.shape == (1, 1, 3)
    assert head.center_patch.flatten().tolist() == pytest.approx(
        (0.1 * torch.cat(patch_t).mean(dim=1).mean(dim=0)).tolist(), rel=1e-5)
    assert head.center.flatten().tolist() == pytest.approx((0.1 * torch.cat(cls_t).mean(dim=0)).tolist(), rel=1e-5)
