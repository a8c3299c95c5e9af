"""MAE: Masked Autoencoders.

He, Chen, Xie, Li, Dollar and Girshick, "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022. The image is cut into patches; a random ``mask_ratio`` (75 %) of them is removed
and the ViT encoder sees only the visible ones. A lightweight decoder receives the encoded
visible patches plus a shared mask token at every removed position (back in the original
order) and predicts the pixels of every patch; the loss is the mean squared error on the
removed patches only, optionally against per-patch normalised pixels (``norm_pix``).

Components (MMSelfSup 0.x names): backbone ``MAEViT`` (``mask_ratio``), neck
``MAEPretrainDecoder``, head ``MAEPretrainHead``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from selfsup_models.algorithm import BaseAlgorithm, check_views

__all__ = ["MAE"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def _num_patches(backbone: nn.Module) -> int | None:
    resolution = getattr(backbone, "patch_resolution", None)
    if resolution is None:
        return None
    return int(resolution[0]) * int(resolution[1])


class MAE(BaseAlgorithm):
    """MAE pre-training.

    Args:
        backbone: an ``MAEViT`` (its ``forward`` returns ``(latent, mask, ids_restore)``
            for its ``mask_ratio``; ``forward_features`` gives unmasked features).
        neck: ``MAEPretrainDecoder`` whose ``num_patches``, ``patch_size`` and ``embed_dim``
            match the backbone.
        head: ``MAEPretrainHead`` (``norm_pix``, ``patch_size``).
        init_cfg: applied to the whole algorithm after the components' own init.

    ``forward_train(img)`` returns ``{"loss"}``; ``extract`` mode returns the backbone's
    *unmasked* features (``forward_features``: ``[patch_map, cls_token]`` per output with
    ``output_cls_token``), so kNN / linear evaluation see whole images.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if not callable(getattr(backbone, "forward_masked", None)) or not callable(
                getattr(backbone, "forward_features", None)):
            raise ValueError(f"MAE: the backbone must be an MAEViT (model.backbone.type = \"MAEViT\"), got "
                             f"{type(backbone).__name__}")
        patches = _num_patches(backbone)
        if patches is not None and getattr(neck, "num_patches", patches) != patches:
            raise ValueError(f"MAE: model.neck.num_patches = {neck.num_patches} but the backbone has {patches} "
                             "patches; set num_patches = (img_size / patch_size) ** 2")
        for owner, key in ((neck, "model.neck.patch_size"), (head, "model.head.patch_size")):
            size = getattr(owner, "patch_size", None)
            if size is not None and size != backbone.patch_size:
                raise ValueError(f"MAE: {key} = {size} but the backbone's patch_size is {backbone.patch_size}")
        embed = getattr(neck, "embed_dim", None)
        if embed is not None and embed != backbone.embed_dims:
            raise ValueError(f"MAE: model.neck.embed_dim = {embed} but the backbone's embed_dims is "
                             f"{backbone.embed_dims}")
        self.init_weights()

    @property
    def mask_ratio(self) -> float:
        return float(self.backbone.mask_ratio)

    def extract_feat(self, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Unmasked backbone features of ``img`` (see the class docstring)."""
        return self.backbone.forward_features(img)

    def reconstruct(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        """One masked forward pass: ``{"loss", "pred" (N, L, p*p*C), "mask" (N, L)}`` (1 = removed)."""
        latent, mask, ids_restore = self.backbone(img)
        pred = self.neck([latent], ids_restore)[0]
        losses = self.head(img, pred, mask)
        return {"loss": losses["loss"], "pred": pred, "mask": mask}

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``img``: a batch ``(N, C, H, W)`` (one view). Returns ``{"loss"}``."""
        view = check_views("MAE", img, 1)[0]
        latent, mask, ids_restore = self.backbone(view)
        pred = self.neck([latent], ids_restore)[0]
        return self.head(view, pred, mask)
