"""SimMIM: a Simple Framework for Masked Image Modeling.

Xie, Zhang, Cao, Lin, Bao, Yao, Dai and Hu, CVPR 2022. Random square regions of the image
(``mask_patch_size`` pixels, e.g. 32) are masked at a ``mask_ratio`` (0.6) by replacing
their patch embeddings with a learnable mask token; the encoder (Swin or ViT) sees every
token; a one-layer prediction head (1x1 conv + pixel shuffle) regresses the raw pixels and
the loss is L1 on the masked pixels only.

Components (MMSelfSup 0.x names): backbone ``SimMIMSwinTransformer`` (or a
``VisionTransformer`` with ``use_mask_token = true``), neck ``SimMIMNeck``, head
``SimMIMHead``. The mask comes with the batch: put ``SimMIMMaskGenerator`` at the end of
the dataset's pipeline, the dataset adds ``"mask"`` to every sample.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, check_views

__all__ = ["SimMIM"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def last_feature_map(outputs: Any) -> torch.Tensor:
    """The backbone's last output as a map ``(N, C, h, w)`` (a ViT's ``[patch_map, cls]`` ->
    ``patch_map``)."""
    out = outputs[-1] if isinstance(outputs, tuple) else outputs
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


class SimMIM(BaseAlgorithm):
    """SimMIM pre-training.

    Args:
        backbone: a backbone with a mask token whose ``forward(img, mask)`` replaces masked
            patch embeddings (``SimMIMSwinTransformer``; ``VisionTransformer`` with
            ``use_mask_token = true``).
        neck: ``SimMIMNeck`` (``in_channels`` = the backbone's ``out_channels``,
            ``encoder_stride`` = its total stride).
        head: ``SimMIMHead`` (``patch_size`` = the backbone's patch size).
        init_cfg: applied to the whole algorithm after the components' own init.

    ``forward_train(img, mask)``: images ``(N, C, H, W)`` and the mask ``(N, H/p, W/p)``
    (1 = masked) from ``SimMIMMaskGenerator``; returns ``{"loss"}``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if getattr(backbone, "mask_token", None) is None:
            raise ValueError(f"SimMIM: the backbone {type(backbone).__name__} has no mask token; use "
                             "SimMIMSwinTransformer or VisionTransformer with use_mask_token = true")
        in_channels = getattr(neck, "in_channels", None)
        out_channels = getattr(backbone, "out_channels", None)
        if in_channels is not None and out_channels is not None and in_channels != out_channels:
            raise ValueError(f"SimMIM: model.neck.in_channels = {in_channels} but the backbone's out_channels is "
                             f"{out_channels}")
        self.init_weights()

    def reconstruct(self, img: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss", "img_rec" (N, C, H, W)}`` for images and their mask."""
        img_rec = self.neck([last_feature_map(self.backbone(img, mask))])[0]
        return {"loss": self.head(img, img_rec, mask)["loss"], "img_rec": img_rec}

    def forward_train(self, img: Any, mask: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        view = check_views("SimMIM", img, 1)[0]
        if mask is None:
            raise ValueError("SimMIM: the batch has no 'mask'; end data.train.pipeline with a SimMIMMaskGenerator")
        if isinstance(mask, (list, tuple)):
            mask = check_views("SimMIM", mask, 1)[0]
        img_rec = self.neck([last_feature_map(self.backbone(view, mask))])[0]
        return self.head(view, img_rec, mask)
