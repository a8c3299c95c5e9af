"""RelativeLoc with RelativeLocDataset: labels against the grid positions of constructed
images, the centre shared across a sample's pairs, the loss against a hand computation and
against MMSelfSup's 8N-centre pass, and one-line errors."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from selfsup_data.datasets.pretext import NEIGHBOURS, RelativeLocDataset
from selfsup_models.backbones.resnet import ResNet
from selfsup_models.heads.cls import ClsHead
from selfsup_models.necks import RelativeLocNeck
from selfsup_pretext.accuracy import PretextAccuracy
from selfsup_pretext.relative_loc import RelativeLoc

from pretext_test_helpers import ArraySource, eval_context, to_float

STEP = 20  # grid cell c (row-major, 0..8) of sample n has the grey value STEP * (c + 1) + n


def grid_images(count: int) -> np.ndarray:
    """30x30 images made of nine constant 10x10 cells, so every patch tells its cell."""
    images = np.zeros((count, 30, 30), dtype=np.uint8)
    for n in range(count):
        for cell in range(9):
            row, col = divmod(cell, 3)
            images[n, row * 10 : row * 10 + 10, col * 10 : col * 10 + 10] = STEP * (cell + 1) + n
    return images


class MeanProbe(nn.Module):
    """A 'backbone' whose feature is the patch's mean grey level (0..255), as (M, 1, 1, 1)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.mean(dim=(1, 2, 3), keepdim=True) * 255,)


class OracleNeck(nn.Module):
    """Reads the pair (neighbour level, centre level), records it, and answers with a one-hot
    of the neighbour's position label (NEIGHBOURS order) scaled by 10."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[torch.Tensor] = []

    def forward(self, x):
        pair = x[0].flatten(1)
        self.pairs.append(pair.detach().clone())
        cells = (pair[:, 0] / STEP).round().long() - 1
        label_of_cell = {r * 3 + c: k for k, (r, c) in enumerate(NEIGHBOURS)}
        labels = torch.tensor([label_of_cell.get(int(c), 0) for c in cells])
        return [nn.functional.one_hot(labels, 8).float() * 10]


def oracle_model() -> RelativeLoc:
    head = ClsHead(with_avg_pool=False, in_channels=8, num_classes=8)
    with torch.no_grad():
        head.fc_cls.weight.copy_(torch.eye(8))
        head.fc_cls.bias.zero_()
    return RelativeLoc(backbone=MeanProbe(), neck=OracleNeck(), head=head)


def dataset_of(count: int) -> RelativeLocDataset:
    return RelativeLocDataset(ArraySource(grid_images(count)), pipeline=[], format_pipeline=to_float(), patch_jitter=2)


def batch_of(dataset, indices) -> dict:
    return torch.utils.data.default_collate([dataset[i] for i in indices])


def test_labels_are_the_neighbour_positions() -> None:
    batch = batch_of(dataset_of(3), range(3))
    assert batch["img"].shape == (3, 8, 2, 8, 8)  # 10x10 cells minus jitter 2: 8x8 patches
    assert batch["patch_label"].tolist() == [list(range(8))] * 3
    model = oracle_model()
    losses = model(mode="train", img=batch["img"], patch_label=batch["patch_label"])
    (pairs,) = model.neck.pairs
    for n in range(3):
        for k, (row, col) in enumerate(NEIGHBOURS):
            neighbour, centre = pairs[n * 8 + k].tolist()
            # label k is the cell at NEIGHBOURS[k]; the centre is cell 4 of the same sample
            assert neighbour == pytest.approx(STEP * (row * 3 + col + 1) + n, abs=1e-3)
            assert centre == pytest.approx(STEP * 5 + n, abs=1e-3)
    assert float(losses["acc"]) == 100.0
    # scores 10 * onehot(label): CE = log(e^10 + 7) - 10 = log(1 + 7 e^-10) for every pair
    assert float(losses["loss"].detach()) == pytest.approx(math.log(1 + 7 * math.exp(-10)), abs=1e-6)  # float32 log-softmax
    shifted = (batch["patch_label"] + 1) % 8
    assert float(oracle_model()(mode="train", img=batch["img"], patch_label=shifted)["acc"]) == 0.0


def test_pretext_accuracy_through_the_evaluator() -> None:
    result = PretextAccuracy(dataset_of(5), samples_per_gpu=2).evaluate(eval_context(oracle_model()))
    assert result == {"pretext_top1": 1.0}


def test_loss_of_constant_scores_matches_hand_computation() -> None:
    # zero features: RelativeLocNeck gives fc(0) = 0 (zero bias), BN of a constant batch = 0,
    # ReLU, dropout -> 0; the scores are ClsHead's bias [ln 3, 0, ..., 0]: softmax denominators
    # 3 + 7 = 10, CE = ln(10 / 3) for label 0 and ln 10 for labels 1..7, each once per sample
    class Zero(nn.Module):
        def forward(self, x):
            return (x.new_zeros(x.shape[0], 4, 2, 2),)

    head = ClsHead(with_avg_pool=False, in_channels=16, num_classes=8)
    with torch.no_grad():
        head.fc_cls.bias.copy_(torch.tensor([math.log(3.0)] + [0.0] * 7))
    model = RelativeLoc(backbone=Zero(), neck=RelativeLocNeck(in_channels=4, out_channels=16), head=head)
    losses = model(mode="train", img=torch.randn(2, 8, 2, 6, 6), patch_label=torch.arange(8).repeat(2, 1))
    assert float(losses["loss"].detach()) == pytest.approx((math.log(10 / 3) + 7 * math.log(10)) / 8, rel=1e-6)


def test_one_centre_pass_equals_mmselfsup_eight_centre_pass() -> None:
    """Loss and gradients equal those of MMSelfSup's forward, which runs the backbone on all
    8N (repeated) centre patches: batch norm sees the same statistics either way."""
    backbone = ResNet(depth=18, in_channels=1, stem_type="cifar", base_channels=4, stem_channels=4)
    neck = RelativeLocNeck(in_channels=32, out_channels=16)
    neck.drop.p = 0.0  # dropout would draw different masks in the two passes
    model = RelativeLoc(backbone=backbone, neck=neck, head=ClsHead(in_channels=16, num_classes=8))
    reference = copy.deepcopy(model)
    batch = batch_of(RelativeLocDataset(ArraySource(np.random.default_rng(0).integers(0, 255, (3, 36, 36))
                                                    .astype(np.uint8)), pipeline=[], format_pipeline=to_float(),
                                        patch_jitter=2), range(3))
    loss = model(mode="train", img=batch["img"], patch_label=batch["patch_label"])["loss"]
    loss.backward()

    # MMSelfSup 0.x: chunk the pairs, both halves of all 8N pairs through the backbone
    img = batch["img"].reshape(24, 2, 10, 10)
    first, second = torch.chunk(img, 2, dim=1)
    feats = torch.cat((reference.backbone(first)[0], reference.backbone(second)[0]), dim=1)
    scores = reference.head(reference.neck([feats]))
    ref_loss = reference.head.loss(scores, batch["patch_label"].reshape(-1))["loss"]
    ref_loss.backward()
    assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_forward_test_and_extract() -> None:
    model = oracle_model().eval()
    batch = batch_of(dataset_of(2), range(2))
    assert model(batch["img"], mode="test")["cls_score"].shape == (16, 8)
    assert model(torch.zeros(3, 1, 28, 28), mode="extract")[0].shape == (3, 1, 1, 1)


def test_errors_name_the_fix() -> None:
    model = oracle_model()
    label = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="RelativeLocDataset"):
        model(mode="train", img=torch.zeros(2, 2, 8, 8), patch_label=label)
    with pytest.raises(ValueError, match="8 images per sample"):
        model(mode="train", img=torch.zeros(2, 4, 2, 8, 8), patch_label=label[:, :4])
    with pytest.raises(ValueError, match="even number of channels"):
        model(mode="train", img=torch.zeros(2, 8, 3, 8, 8), patch_label=label)
    with pytest.raises(ValueError, match="no patch_label"):
        model(mode="train", img=torch.zeros(2, 8, 2, 8, 8))
    with pytest.raises(ValueError, match="neck and head are required"):
        RelativeLoc(backbone=MeanProbe(), neck=None, head=None)
