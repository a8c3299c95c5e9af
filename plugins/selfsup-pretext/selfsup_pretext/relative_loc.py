"""RelativeLoc: predict where a patch lies relative to the centre patch of a 3x3 grid.

Doersch, Gupta, Efros, "Unsupervised Visual Representation Learning by Context Prediction",
ICCV 2015; MMSelfSup 0.x's ``RelativeLoc``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, InitCfg
from selfsup_models.necks import single_feature

from ._views import flatten_labels, flatten_views

NUM_POSITIONS = 8


class RelativeLoc(BaseAlgorithm):
    """Relative patch location: an 8-way classifier of the position of a neighbour patch
    relative to the centre patch, from the two patches' backbone features.

    Args:
        backbone: the backbone (one ``out_indices`` stage), shared by both patches.
        neck: fuses the pair, ``RelativeLocNeck(in_channels=<backbone channels>,
            out_channels=4096)``: it receives the neighbour's and the centre's features
            concatenated along channels, ``(M, 2 * C, h, w)``, and returns ``[(M, out)]``.
        head: the position classifier, ``ClsHead(with_avg_pool=False, in_channels=4096,
            num_classes=8)``.
        init_cfg: initialisation of the whole algorithm after its components'.

    Training input (from ``RelativeLocDataset``): ``img (N, 8, 2C, h, w)``, ``img[n, k]`` =
    neighbour patch ``k`` (channels ``0:C``) next to the centre patch (channels ``C:2C``), and
    ``patch_label (N, 8)`` = ``[0..7]``. Loss: ``CrossEntropy(head(neck(cat(f(neighbour),
    f(centre)))), patch_label)`` over the ``8N`` pairs, ``f`` the backbone, as MMSelfSup.

    Every pair of a sample holds the same centre patch (that is how ``RelativeLocDataset`` builds
    them), so the centre goes through the backbone once per sample (``N`` patches, not ``8N``)
    and its features are repeated for the 8 pairs. The result is the same as MMSelfSup's
    ``8N``-patch pass: batch normalisation of a batch in which every patch appears 8 times
    has the same mean and (biased) variance as of the distinct patches, and the gradients
    sum over the 8 uses either way; only the running variance's ``n / (n - 1)`` correction
    differs, negligibly. The backbone sees ``9N`` patches per step instead of ``16N``.

    ``forward(img, mode="test")`` gives ``{"cls_score": (N * 8, 8)}`` for such a batch, scored
    by :class:`~selfsup_pretext.accuracy.PretextAccuracy`; ``mode="extract"`` is the backbone's
    output on plain images (kNN, linear probe).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        if neck is None or head is None:
            raise ValueError("RelativeLoc: neck and head are required; add [model.neck] type = \"RelativeLocNeck\" and "
                             "[model.head] type = \"ClsHead\", num_classes = 8")
        super().__init__(backbone=backbone, neck=neck, head=head, init_cfg=init_cfg)

    def pair_scores(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The head's scores ``[(N * 8, 8)]`` of a ``(N, 8, 2C, h, w)`` batch of pairs (sample-major)."""
        owner = type(self).__name__
        pairs = flatten_views(owner, img, "RelativeLocDataset", NUM_POSITIONS)
        if pairs.shape[1] % 2:
            raise ValueError(f"{owner}: a pair stacks the neighbour and the centre patch along channels, so img "
                             f"must have an even number of channels, got {pairs.shape[1]}")
        channels = pairs.shape[1] // 2
        # contiguous copies: a channel slice is a strided view, which CPU convolutions run slowly
        neighbours = pairs[:, :channels].contiguous()
        centres = img[:, 0, channels:].contiguous()  # the same centre patch in all 8 pairs of a sample
        f_neighbour = single_feature(self.extract_feat(neighbours), owner)
        f_centre = single_feature(self.extract_feat(centres), owner)
        f_centre = f_centre.repeat_interleave(img.shape[1], dim=0)
        return self.head(self.neck([torch.cat((f_neighbour, f_centre), dim=1)]))

    def forward_train(self, img: Any, patch_label: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{"loss": cross-entropy, "acc": top-1 in percent}`` of the position classifier."""
        owner = type(self).__name__
        if patch_label is None:
            raise ValueError(f"{owner}: the batch has no patch_label; use data.train.type = \"RelativeLocDataset\"")
        scores = self.pair_scores(img)
        return self.head.loss(scores, flatten_labels(owner, patch_label, img, "patch_label"))

    def forward_test(self, img: torch.Tensor, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{"cls_score": position scores}``, one row per pair (sample-major)."""
        return {"cls_score": single_feature(self.pair_scores(img), type(self).__name__)}


__all__ = ["NUM_POSITIONS", "RelativeLoc"]
