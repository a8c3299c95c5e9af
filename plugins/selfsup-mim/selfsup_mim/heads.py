"""Reconstruction heads of masked image modelling: MAE's per-patch MSE and SimMIM's L1.

Both compute the loss only where the mask is 1 (the patches the encoder did not see), in
float32 also under autocast.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F

from selfsup_models.init import BaseModule

__all__ = ["MAEPretrainHead", "SimMIMHead", "patchify", "unpatchify"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def patchify(img: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images ``(N, C, H, W)`` -> patches ``(N, L, p*p*C)``, row-major over the patch grid;
    inside a patch the pixels are ordered ``(row, column, channel)`` as in MAE."""
    n, c, h, w = img.shape
    p = int(patch_size)
    if h % p or w % p:
        raise ValueError(f"patchify: image size {h}x{w} is not divisible by patch_size {p}")
    gh, gw = h // p, w // p
    x = img.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int], channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(N, L, p*p*C)`` -> ``(N, C, gh*p, gw*p)``."""
    n, length, dim = patches.shape
    p = int(patch_size)
    gh, gw = grid
    if length != gh * gw or dim != p * p * channels:
        raise ValueError(f"unpatchify: patches {tuple(patches.shape)} do not fit a {gh}x{gw} grid of "
                         f"{p}x{p}x{channels} patches")
    x = patches.reshape(n, gh, gw, p, p, channels)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, channels, gh * p, gw * p)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


class MAEPretrainHead(BaseModule):
    """MAE reconstruction loss: mean squared error per patch, averaged over the masked patches.

    Args:
        norm_pix: normalise each target patch by its own mean and variance
            (``(t - mean) / sqrt(var + 1e-6)`` with the unbiased variance, dividing by
            ``p*p*C - 1``, as MMSelfSup 0.x and the official MAE code) before the loss (the paper's
            "norm_pix_loss", better representations).
        patch_size: the encoder's patch side in pixels.
        init_cfg: unused (no parameters); accepted as every component does.

    ``forward(img, pred, mask)``: ``img (N, C, H, W)``, ``pred (N, L, p*p*C)`` from the
    decoder (patch order as :func:`patchify`), ``mask (N, L)`` with 1 = removed. Returns
    ``{"loss": sum_i mask_i * mean_j (pred_ij - target_ij)^2 / sum_i mask_i}``.
    """

    def __init__(self, norm_pix: bool = False, patch_size: int = 16, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if patch_size < 1:
            raise ValueError(f"MAEPretrainHead: patch_size must be >= 1, got {patch_size}")
        self.norm_pix = bool(norm_pix)
        self.patch_size = int(patch_size)

    def target(self, img: torch.Tensor) -> torch.Tensor:
        """The per-patch regression target ``(N, L, p*p*C)`` (normalised with ``norm_pix``)."""
        target = patchify(_float(img), self.patch_size)
        if self.norm_pix:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target

    def forward(self, img: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        target = self.target(img)
        if pred.shape != target.shape:
            raise ValueError(f"MAEPretrainHead: prediction {tuple(pred.shape)} does not match the target patches "
                             f"{tuple(target.shape)}; set the decoder's patch_size/in_chans to the encoder's")
        if mask.shape != target.shape[:2]:
            raise ValueError(f"MAEPretrainHead: mask {tuple(mask.shape)} does not match {tuple(target.shape[:2])}")
        per_patch = (_float(pred) - target).pow(2).mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        return {"loss": (per_patch * mask).sum() / mask.sum().clamp_min(1.0)}


class SimMIMHead(BaseModule):
    """SimMIM reconstruction loss: L1 over the masked pixels, per channel.

    Args:
        patch_size: pixels per mask cell side: the mask (at the backbone's patch grid, as
            ``SimMIMMaskGenerator`` makes it) is repeated ``patch_size`` times along each axis
            to reach the image size.
        encoder_in_channels: image channels (3 for RGB, 1 for grey).
        init_cfg: unused (no parameters).

    ``forward(img, img_rec, mask)``: images ``(N, C, H, W)``, reconstructions of the same
    shape, ``mask (N, H/p, W/p)`` with 1 = masked. Returns
    ``{"loss": sum |img - rec| * mask_px / (sum mask_px + 1e-5) / C}`` as SimMIM and MMSelfSup.
    """

    def __init__(self, patch_size: int = 4, encoder_in_channels: int = 3, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if patch_size < 1 or encoder_in_channels < 1:
            raise ValueError("SimMIMHead: patch_size and encoder_in_channels must be >= 1")
        self.patch_size = int(patch_size)
        self.encoder_in_channels = int(encoder_in_channels)

    def pixel_mask(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The patch mask ``(N, h, w)`` -> ``(N, 1, H, W)`` floats."""
        p = self.patch_size
        if mask.dim() != 3 or (mask.shape[1] * p, mask.shape[2] * p) != tuple(size):
            raise ValueError(f"SimMIMHead: mask {tuple(mask.shape)} times patch_size {p} does not cover images of "
                             f"{size[0]}x{size[1]}; set patch_size to the mask generator's model_patch_size")
        return mask.repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1).float()

    def forward(self, img: torch.Tensor, img_rec: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if img_rec.shape != img.shape:
            raise ValueError(f"SimMIMHead: reconstruction {tuple(img_rec.shape)} does not match the images "
                             f"{tuple(img.shape)}; set the neck's encoder_stride/out_channels")
        if img.shape[1] != self.encoder_in_channels:
            raise ValueError(f"SimMIMHead: images have {img.shape[1]} channels, encoder_in_channels is "
                             f"{self.encoder_in_channels}")
        pixels = self.pixel_mask(mask, img.shape[-2:])
        loss = F.l1_loss(_float(img_rec), _float(img), reduction="none")
        return {"loss": (loss * pixels).sum() / (pixels.sum() + 1e-5) / self.encoder_in_channels}
