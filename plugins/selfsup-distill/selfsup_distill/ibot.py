"""iBOT: image BERT pre-training with an online tokenizer (Zhou et al., ICLR 2022)."""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from selfsup_models.algorithm import resolution_groups
from torch import nn

from .dino import DINO
from .masks import BlockMaskSampler

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def _cls_and_patches(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A ViT's last output ``[patch_map (N, C, H, W), cls (N, C)]`` -> ``(cls, patches (N, H*W, C))``."""
    last = output[-1] if isinstance(output, tuple) else output
    if not isinstance(last, (list, tuple)) or len(last) != 2:
        raise ValueError("iBOT: the backbone must return [patch_map, cls_token] (a VisionTransformer with "
                         "output_cls_token = true)")
    patch_map, cls = last
    return cls, patch_map.flatten(2).transpose(1, 2)


class iBOT(DINO):  # noqa: N801 - the method's own spelling
    """iBOT: DINO's [CLS] self-distillation plus masked-patch self-distillation.

    The student's global views are masked blockwise (:class:`~selfsup_distill.masks.BlockMaskSampler`:
    each view of each image with probability ``mask_prob``, a ratio drawn from
    ``mask_ratio``): their masked patch embeddings are replaced by the backbone's learnable
    ``mask_token`` (``VisionTransformer`` with ``use_mask_token = true``); the teacher sees the
    unmasked views. The same neck and last layer (a shared head) project the [CLS] token and
    every patch token. Loss (``iBOTHead``): ``lambda_cls * DINO loss`` on [CLS] (teacher
    global views against every other student view) ``+ lambda_patch * patch loss``, the
    cross-entropy on the masked positions of the same view (student masked vs teacher
    unmasked). Local views are not masked and give [CLS] only.

    Args (beyond :class:`~selfsup_distill.dino.DINO`'s):
        mask_ratio: ``[low, high]`` of the masked fraction of a masked view (``[0.1, 0.5]``).
        mask_prob: probability that a global view of an image is masked (0.5).
        mask_aspect: ``[low, high]`` aspect ratios of the mask blocks (``[0.3, 1 / 0.3]``).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.996,
                 num_global_views: int = 2, mask_ratio: Sequence[float] = (0.1, 0.5), mask_prob: float = 0.5,
                 mask_aspect: Sequence[float] = (0.3, 1 / 0.3), init_cfg: InitCfg = None) -> None:
        if getattr(backbone, "mask_token", None) is None:
            raise ValueError("iBOT: the backbone needs a mask token: a VisionTransformer with use_mask_token = true")
        if not hasattr(head, "ibot_loss"):
            raise ValueError(f"iBOT: needs head.type = 'iBOTHead', got {type(head).__name__}")
        super().__init__(backbone, neck, head, base_momentum, num_global_views, init_cfg)
        BlockMaskSampler((1, 1), mask_ratio, mask_prob, mask_aspect)  # validate now, not at the first batch
        self.mask_ratio = tuple(float(v) for v in mask_ratio)
        self.mask_prob = float(mask_prob)
        self.mask_aspect = tuple(float(v) for v in mask_aspect)
        self._rng: random.Random | None = None

    def sample_masks(self, batch: int, grid: tuple[int, int]) -> torch.Tensor:
        """``(batch, H, W)`` bool masks for one global view (the Python RNG is seeded from torch's
        on first use, so a run's seed fixes the masks)."""
        if self._rng is None:
            self._rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
        return BlockMaskSampler(grid, self.mask_ratio, self.mask_prob, self.mask_aspect, self._rng)(batch)

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        views = self._views(img)
        g = self.num_global_views
        size = views[0].shape[-2:]
        if any(v.shape[-2:] != size for v in views[:g]):
            raise ValueError("iBOT: the global views must have one size (the first num_global_views views)")
        patch = self.backbone.patch_size
        grid = (int(size[0]) // patch, int(size[1]) // patch)
        n = views[0].shape[0]
        masks = [self.sample_masks(n, grid).to(views[0].device) for _ in range(g)]
        with torch.no_grad():
            cls, patches = _cls_and_patches(self.target_backbone(torch.cat(views[:g])))
            teacher_cls = list(self.target_last_layer(self.target_neck.project(cls)).chunk(g))
            teacher_patch = list(self.target_last_layer(self.target_neck.project(patches)).chunk(g))
        cls, patches = _cls_and_patches(self.backbone(torch.cat(views[:g]), mask=torch.cat(masks)))
        student_cls = list(self.head(self.neck.project(cls)).chunk(g))
        student_patch = list(self.head(self.neck.project(patches)).chunk(g))
        for start, end in resolution_groups(views[g:]):
            emb = self.neck(self.backbone(torch.cat(views[g + start:g + end])))[0]
            student_cls += list(self.head(emb).chunk(end - start))
        flat_masks = [m.flatten(1) for m in masks]
        return self.head.ibot_loss(student_cls, student_patch, teacher_cls, teacher_patch, flat_masks, self.epoch)


__all__ = ["iBOT"]
