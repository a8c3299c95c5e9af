"""RotationPred: predict by how many quarter turns an image was rotated.

Gidaris, Singh, Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018; MMSelfSup 0.x's ``RotationPred``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, InitCfg

from ._views import flatten_labels, flatten_views

NUM_ROTATIONS = 4


class RotationPred(BaseAlgorithm):
    """Rotation prediction: a 4-way classifier on the backbone's features of each image
    rotated by 0, 90, 180 and 270 degrees.

    Args:
        backbone: the backbone (one ``out_indices`` stage, e.g. ResNet stage 4).
        head: the rotation classifier, ``ClsHead(with_avg_pool=True, in_channels=<backbone
            channels>, num_classes=4)``; its ``loss`` gives the cross-entropy and top-1.
        init_cfg: initialisation of the whole algorithm after its components'.

    Training input (from ``RotationPredDataset``): ``img (N, 4, C, H, W)``, ``img[:, k]``
    rotated ``k`` quarter turns counter-clockwise, and ``rot_label (N, 4)`` (``[0, 1, 2, 3]``
    per sample). The ``4N`` images go through the backbone as one batch (``(N * 4, C, H, W)``,
    sample-major, as MMSelfSup flattens them) and the loss is
    ``CrossEntropy(head(backbone(img)), rot_label)`` averaged over the ``4N`` images.

    ``forward(img, mode="test")`` gives ``{"cls_score": (N * 4, 4)}`` for such a batch (or
    ``(N, 4)`` for plain ``(N, C, H, W)`` images): the rotation scores scored by
    :class:`~selfsup_pretext.accuracy.PretextAccuracy`. ``mode="extract"`` is the backbone's
    output on plain images (kNN, linear probe).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        if head is None:
            raise ValueError("RotationPred: head is required; add [model.head] type = \"ClsHead\", num_classes = 4")
        super().__init__(backbone=backbone, neck=None, head=head, init_cfg=init_cfg)

    def forward_train(self, img: Any, rot_label: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{"loss": cross-entropy, "acc": top-1 in percent}`` of the rotation classifier."""
        owner = type(self).__name__
        if rot_label is None:
            raise ValueError(f"{owner}: the batch has no rot_label; use data.train.type = \"RotationPredDataset\"")
        images = flatten_views(owner, img, "RotationPredDataset", NUM_ROTATIONS)
        labels = flatten_labels(owner, rot_label, img, "rot_label")
        scores = self.head(self.extract_feat(images))
        return self.head.loss(scores, labels)

    def forward_test(self, img: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{"cls_score": rotation scores}``, one row per image (sample-major for 5-d input)."""
        if isinstance(img, torch.Tensor) and img.dim() == 5:
            img = flatten_views(type(self).__name__, img, "RotationPredDataset", NUM_ROTATIONS)
        scores = self.head(self.extract_feat(img))
        return {"cls_score": scores[0] if isinstance(scores, (list, tuple)) else scores}


__all__ = ["NUM_ROTATIONS", "RotationPred"]
