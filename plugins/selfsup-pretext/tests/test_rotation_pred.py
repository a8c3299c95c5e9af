"""RotationPred with RotationPredDataset: labels against rotations of constructed images,
the loss against a hand computation, test-time scores, and one-line errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup_data.datasets.pretext import RotationPredDataset
from selfsup_models.heads.cls import ClsHead
from selfsup_pretext.accuracy import PretextAccuracy
from selfsup_pretext.rotation_pred import RotationPred

from pretext_test_helpers import ArraySource, eval_context, to_float


class QuadrantProbe(nn.Module):
    """A 'backbone' whose feature is the mean of each 4x4 quadrant of an 8x8 image, in the
    order top-left, bottom-left, bottom-right, top-right: where a top-left marker lands after
    k = 0, 1, 2, 3 counter-clockwise quarter turns. Records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.seen.append(x.detach().clone())
        q = [x[..., :4, :4], x[..., 4:, :4], x[..., 4:, 4:], x[..., :4, 4:]]
        return (torch.stack([t.mean(dim=(1, 2, 3)) for t in q], dim=1)[:, :, None, None],)


def marker_images(values: list[int]) -> np.ndarray:
    """8x8 black images with the top-left quadrant set to ``values[n]`` (upright 'garments')."""
    images = np.zeros((len(values), 8, 8), dtype=np.uint8)
    for n, value in enumerate(values):
        images[n, :4, :4] = value
    return images


def probe_model(scale: float = 10.0) -> RotationPred:
    head = ClsHead(with_avg_pool=True, in_channels=4, num_classes=4)
    with torch.no_grad():
        head.fc_cls.weight.copy_(torch.eye(4) * scale)
        head.fc_cls.bias.zero_()
    return RotationPred(backbone=QuadrantProbe(), head=head)


def batch_of(dataset, indices) -> dict:
    return torch.utils.data.default_collate([dataset[i] for i in indices])


VALUES = [255, 204, 153]  # markers 1.0, 0.8, 0.6 after scaling to [0, 1]


def test_labels_are_the_quarter_turns_the_marker_shows() -> None:
    dataset = RotationPredDataset(ArraySource(marker_images(VALUES)), pipeline=to_float())
    model = probe_model()
    batch = batch_of(dataset, range(3))
    assert batch["img"].shape == (3, 4, 1, 8, 8)
    assert batch["rot_label"].tolist() == [[0, 1, 2, 3]] * 3
    losses = model(mode="train", img=batch["img"], rot_label=batch["rot_label"])
    # the backbone saw the 12 images sample-major: row n * 4 + k is sample n turned k times
    (seen,) = model.backbone.seen
    for n in range(3):
        upright = batch["img"][n, 0]
        for k in range(4):
            assert torch.equal(seen[n * 4 + k], torch.rot90(upright, k, dims=(-2, -1)))
            # the marker sits in quadrant k of the probe's order, i.e. the label's class
            feature = model.backbone(seen[n * 4 + k][None])[0].flatten()
            assert int(feature.argmax()) == k
    assert float(losses["acc"]) == 100.0
    # hand computation: row of sample n, label k has scores 10 * a_n * onehot(k) with
    # a_n = 1.0, 0.8, 0.6, so CE = log(e^(10 a) + 3) - 10 a = log(1 + 3 e^(-10 a)), the same
    # for every k; the mean over the 12 rows:
    expected = sum(math.log(1 + 3 * math.exp(-10 * a)) for a in (1.0, 0.8, 0.6)) / 3
    assert float(losses["loss"].detach()) == pytest.approx(expected, rel=1e-5)


def test_wrong_labels_score_zero() -> None:
    dataset = RotationPredDataset(ArraySource(marker_images(VALUES)), pipeline=to_float())
    batch = batch_of(dataset, range(3))
    shifted = (batch["rot_label"] + 1) % 4
    assert float(probe_model()(mode="train", img=batch["img"], rot_label=shifted)["acc"]) == 0.0


def test_loss_of_constant_scores_matches_hand_computation() -> None:
    # a backbone with zero features: the scores are the head's bias [0, ln 2, 0, 0]; softmax
    # denominators 1 + 2 + 1 + 1 = 5, so CE = ln 5 for labels 0, 2, 3 and ln(5 / 2) for label 1;
    # every sample has the labels 0..3 once: mean = (3 ln 5 + ln 2.5) / 4
    class Zero(nn.Module):
        def forward(self, x):
            return (x.new_zeros(x.shape[0], 4, 1, 1),)

    head = ClsHead(with_avg_pool=True, in_channels=4, num_classes=4)
    with torch.no_grad():
        head.fc_cls.bias.copy_(torch.tensor([0.0, math.log(2.0), 0.0, 0.0]))
    model = RotationPred(backbone=Zero(), head=head)
    img = torch.randn(2, 4, 1, 8, 8)
    losses = model(mode="train", img=img, rot_label=torch.arange(4).repeat(2, 1))
    assert float(losses["loss"].detach()) == pytest.approx((3 * math.log(5) + math.log(2.5)) / 4, rel=1e-6)
    assert float(losses["acc"]) == 25.0  # argmax is always class 1


def test_forward_test_scores_one_row_per_image() -> None:
    model = probe_model().eval()
    out = model(torch.zeros(2, 4, 1, 8, 8), mode="test")
    assert out["cls_score"].shape == (8, 4)
    assert model(torch.zeros(3, 1, 8, 8), mode="test")["cls_score"].shape == (3, 4)
    feats = model(torch.zeros(3, 1, 8, 8), mode="extract")
    assert isinstance(feats, tuple) and feats[0].shape == (3, 4, 1, 1)


def test_pretext_accuracy_through_the_evaluator() -> None:
    dataset = RotationPredDataset(ArraySource(marker_images(VALUES * 3)), pipeline=to_float())
    model = probe_model()
    assert PretextAccuracy(dataset).evaluate(eval_context(model)) == {"pretext_top1": 1.0}
    with torch.no_grad():  # a classifier that always answers "one quarter turn further"
        model.head.fc_cls.weight.copy_(torch.eye(4).roll(1, dims=0) * 10)
    assert PretextAccuracy(dataset, label_key="rot_label").evaluate(eval_context(model)) == {"pretext_top1": 0.0}


def test_pretext_accuracy_counts_only_this_shard_without_padding() -> None:
    # rank 1 of 2 over 5 samples: positions 1 and 3 (the sampler pads to 3 with position 0)
    dataset = RotationPredDataset(ArraySource(marker_images([255] * 5)), pipeline=to_float())
    model = probe_model()
    result = PretextAccuracy(dataset, samples_per_gpu=2).evaluate(eval_context(model, rank=1, world_size=2))
    assert result == {"pretext_top1": 1.0}
    assert sum(len(x) for x in model.backbone.seen) == 2 * 4


def test_errors_name_the_fix() -> None:
    model = probe_model()
    with pytest.raises(ValueError, match="RotationPredDataset"):
        model(mode="train", img=torch.zeros(2, 1, 8, 8), rot_label=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="4 images per sample"):
        model(mode="train", img=torch.zeros(2, 3, 1, 8, 8), rot_label=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no rot_label"):
        model(mode="train", img=torch.zeros(2, 4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"rot_label must have shape \(2, 4\)"):
        model(mode="train", img=torch.zeros(2, 4, 1, 8, 8), rot_label=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="head is required"):
        RotationPred(backbone=QuadrantProbe(), head=None)
    dataset = RotationPredDataset(ArraySource(marker_images([255])), pipeline=to_float())
    with pytest.raises(ValueError, match="set label_key"):
        PretextAccuracy(_TwoLabels(dataset)).evaluate(eval_context(model))
    with pytest.raises(ValueError, match="label_key 'patch_label'"):
        PretextAccuracy(dataset, label_key="patch_label").evaluate(eval_context(model))


class _TwoLabels(torch.utils.data.Dataset):
    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {**self.inner[i], "other_label": 0}
