"""MaskFeat: Masked Feature Prediction for Self-Supervised Visual Pre-Training.

Wei, Fan, Xie, Wu, Yuille and Feichtenhofer, CVPR 2022. A ViT whose masked patch embeddings
(block-wise masking, 40 %) are replaced by a learnable mask token sees every token; a linear
head predicts each patch's HOG features (:class:`selfsup_mim.hog.HOGGenerator`) and the loss
is the mean squared error over the masked patches only.

Components (MMSelfSup 0.x names): algorithm ``MaskFeat`` (with ``hog_para``), backbone
``MaskFeatViT``, head ``MaskFeatPretrainHead``, pipeline transform ``MaskFeatMaskGenerator``
(put it last in ``data.train.pipeline``; the dataset adds ``"mask"`` to every sample).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from selfsup_data.masks import BlockwiseMaskGenerator
from selfsup_models.algorithm import BaseAlgorithm, check_views
from selfsup_models.backbones.vision_transformer import VisionTransformer
from selfsup_models.init import BaseModule

from .hog import HOGGenerator

__all__ = ["MaskFeat", "MaskFeatMaskGenerator", "MaskFeatPretrainHead", "MaskFeatViT", "check_mask_ratio"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def check_mask_ratio(owner: str, value: float, key: str = "mask_ratio") -> float:
    """``value`` as a float if it lies strictly between 0 and 1, else ``ValueError`` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{owner}: {key} must be in (0, 1), got {value!r}; set {key} to e.g. 0.4")
    return float(value)


class MaskFeatMaskGenerator(BlockwiseMaskGenerator):
    """MaskFeat's block-wise mask (MMSelfSup 0.x name): ``int(mask_window_size**2 * mask_ratio)``
    patches of a ``mask_window_size`` square grid masked in rectangles (BEiT's algorithm, see
    :class:`~selfsup_data.masks.BlockwiseMaskGenerator`).

    Args:
        mask_window_size: the grid side in patches (14 for 224 px and 16 px patches).
        mask_ratio: fraction of patches to mask, in (0, 1) (0.4).
        min_num_patches, max_num_patches, min_aspect, max_aspect: rectangle limits (0.x defaults).
    Returns (on an image): ``{"img": img, "mask": BoolTensor (size, size)}``.
    """

    def __init__(self, mask_window_size: int = 14, mask_ratio: float = 0.4, min_num_patches: int = 15,
                 max_num_patches: Union[int, None] = None, min_aspect: float = 0.3,
                 max_aspect: Union[float, None] = None) -> None:
        ratio = check_mask_ratio("MaskFeatMaskGenerator", mask_ratio)
        if not isinstance(mask_window_size, int) or mask_window_size < 1:
            raise ValueError(f"MaskFeatMaskGenerator: mask_window_size must be a positive int, got {mask_window_size!r}")
        count = int(mask_window_size ** 2 * ratio)
        super().__init__(mask_window_size, count, min_num_patches=min(min_num_patches, max(count, 1)),
                         max_num_patches=max_num_patches, min_aspect=min_aspect, max_aspect=max_aspect)
        self.mask_ratio = ratio


class MaskFeatViT(VisionTransformer):
    """MMSelfSup's ``MaskFeatViT``: a :class:`VisionTransformer` with a learnable mask token
    (``use_mask_token`` always on, cls token kept).

    ``forward(x)`` gives unmasked features as the ViT does (for evaluation);
    :meth:`forward_mask` is the pre-training encoder.
    """

    def __init__(self, arch: Union[str, Mapping[str, int]] = "base", img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16, in_channels: int = 3, out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 qkv_bias: bool = True, norm_cfg: Union[Mapping[str, Any], None] = None, final_norm: bool = True,
                 output_cls_token: bool = True, interpolate_mode: str = "bicubic",
                 pos_embed_type: str = "learnable", frozen_stages: int = -1, init_cfg: InitCfg = None) -> None:
        super().__init__(arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels,
                         out_indices=out_indices, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, qkv_bias=qkv_bias, norm_cfg=norm_cfg or {"type": "LN", "eps": 1e-6},
                         final_norm=final_norm, with_cls_token=True, output_cls_token=output_cls_token,
                         interpolate_mode=interpolate_mode,
                         pos_embed_type=pos_embed_type, frozen_stages=frozen_stages, use_mask_token=True,
                         init_cfg=init_cfg)

    def forward_mask(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)`` and mask ``(N, Hp, Wp)`` (1 = replaced by the mask token) ->
        tokens ``(N, 1 + Hp*Wp, C)`` after the final norm (cls token first)."""
        tokens, _ = self._embed(x, mask)
        tokens = self.drop_after_pos(self._prepend_cls(tokens))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class MaskFeatPretrainHead(BaseModule):
    """Linear prediction of the HOG target and its L2 loss on the masked patches.

    Args:
        embed_dim: the encoder's width (768).
        hog_dim: HOG features per patch (108 = 3 channels x 9 bins x 2 x 2 cells).
        init_cfg: applied after the default init (weight trunc-normal std 2e-5, bias 0, as 0.x).

    ``forward(latent (N, L, C), hog (N, L, hog_dim), mask (N, L) or (N, h, w))`` ->
    ``{"loss": mean over masked patches of mean_j (pred_j - hog_j)^2}``.
    """

    def __init__(self, embed_dim: int = 768, hog_dim: int = 108, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.head = nn.Linear(int(embed_dim), int(hog_dim))
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self.hog_dim = int(hog_dim)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error per patch, averaged over the patches where ``mask`` is true."""
        mask = mask.flatten(1).bool()
        if pred.shape != target.shape:
            raise ValueError(f"MaskFeatPretrainHead: prediction {tuple(pred.shape)} does not match the HOG target "
                             f"{tuple(target.shape)}; set model.head.hog_dim = {target.shape[-1]}")
        diff = (pred.float()[mask] - target.float()[mask]) ** 2
        return diff.mean(dim=-1).mean() if diff.numel() else pred.sum() * 0.0

    def forward(self, latent: torch.Tensor, hog: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.head(latent), hog, mask)}


class MaskFeat(BaseAlgorithm):
    """MaskFeat pre-training.

    Args:
        backbone: ``MaskFeatViT``.
        head: ``MaskFeatPretrainHead`` (``hog_dim`` = the HOG generator's ``out_dim``).
        hog_para: :class:`HOGGenerator` arguments (``nbins``, ``pool``, ``gaussian_window``);
            ``patch_size`` and ``in_channels`` default to the backbone's.
        neck: unused (MaskFeat has none); accepted for symmetry.
        init_cfg: applied to the whole algorithm after the components' own init.

    ``forward_train(img, mask)``: images ``(N, C, H, W)`` and the mask ``(N, Hp, Wp)`` from
    ``MaskFeatMaskGenerator``; returns ``{"loss"}``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, hog_para: Union[Mapping[str, Any], None] = None,
                 neck: Union[nn.Module, None] = None, init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if not callable(getattr(backbone, "forward_mask", None)):
            raise ValueError(f"MaskFeat: model.backbone must be a MaskFeatViT, got {type(backbone).__name__}")
        para = dict(hog_para or {})
        para.setdefault("patch_size", getattr(backbone, "patch_size", 16))
        para.setdefault("in_channels", backbone.patch_embed.proj.in_channels)
        try:
            self.hog_layer = HOGGenerator(**para)
        except ValueError as exc:
            raise ValueError(f"model.hog_para: {exc}") from None
        hog_dim = getattr(head, "hog_dim", None)
        if hog_dim is not None and hog_dim != self.hog_layer.out_dim:
            raise ValueError(f"MaskFeat: model.head.hog_dim = {hog_dim} but the HOG target has "
                             f"{self.hog_layer.out_dim} features per patch; set model.head.hog_dim = "
                             f"{self.hog_layer.out_dim}")
        self.init_weights()

    def forward_train(self, img: Any, mask: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        view = check_views("MaskFeat", img, 1)[0]
        if mask is None:
            raise ValueError("MaskFeat: the batch has no 'mask'; end data.train.pipeline with a MaskFeatMaskGenerator")
        if isinstance(mask, (list, tuple)):
            mask = check_views("MaskFeat", mask, 1)[0]
        hog = self.hog_layer(view)
        latent = self.backbone.forward_mask(view, mask)
        return self.head(latent[:, self.backbone.num_extra_tokens:], hog, mask)
