"""HOG targets of MaskFeat (MMSelfSup 0.x ``HOGLayerC``, here ``HOGGenerator``).

Per image channel: Sobel gradients (3x3, reflect padding), magnitude weighted by a Gaussian
window (tiled over the image), orientation ``atan2(gx, gy) / pi * nbins`` binned by
``floor(.) mod nbins`` (unsigned orientation, ``nbins`` bins over 180 degrees), magnitudes
summed per ``pool x pool`` cell, each cell's histogram L2-normalised, and the cells gathered
per ``patch_size`` patch: ``(N, L, C * nbins * (patch/pool)**2)``, ordered
(channel, bin, cell row, cell column) inside a patch, patches row-major. With 224 px RGB
images, 16 px patches and 8 px cells that is ``(N, 196, 108)`` as MMSelfSup 0.x.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HOGGenerator", "gaussian_window"]


def gaussian_window(size: int, std: float) -> torch.Tensor:
    """The 2-d Gaussian ``(size, size)`` centred on the window, summing to 1."""
    n = torch.arange(size, dtype=torch.float64)
    n = (n - n.mean()) / std
    w = torch.exp(-0.5 * n ** 2)
    k = torch.outer(w, w)
    return (k / k.sum()).float()


class HOGGenerator(nn.Module):
    """Histograms of oriented gradients per patch (MaskFeat's regression target).

    Args:
        nbins: orientation bins (9).
        pool: cell side in pixels (8); must divide ``patch_size``.
        gaussian_window: side of the Gaussian weighting window in pixels (16; std = half of
            it); 0 = no weighting. The image side must be a multiple of it.
        patch_size: the encoder's patch side in pixels (16), over which cells are gathered.
        in_channels: image channels (3; 1 for grey).

    ``forward(img (N, C, H, W))`` -> ``(N, H/p * W/p, C * nbins * (p/pool)**2)``, no gradient.
    """

    def __init__(self, nbins: int = 9, pool: int = 8, gaussian_window: int = 16, patch_size: int = 16,
                 in_channels: int = 3) -> None:
        super().__init__()
        if nbins < 1 or pool < 1 or patch_size < 1 or in_channels < 1 or gaussian_window < 0:
            raise ValueError("HOGGenerator: nbins, pool, patch_size and in_channels must be >= 1, gaussian_window >= 0")
        if patch_size % pool:
            raise ValueError(f"HOGGenerator: pool (the HOG cell, {pool} px) must divide the patch size "
                             f"({patch_size} px); set hog_para.pool to a divisor of {patch_size}")
        self.nbins, self.pool, self.patch_size = int(nbins), int(pool), int(patch_size)
        self.in_channels = int(in_channels)
        self.gaussian_window = int(gaussian_window)
        if gaussian_window:
            self.register_buffer("gkern", _gkern(gaussian_window), persistent=False)
        else:
            self.gkern = None

    @property
    def out_dim(self) -> int:
        """Target size per patch: ``C * nbins * (patch_size / pool)**2``."""
        return self.in_channels * self.nbins * (self.patch_size // self.pool) ** 2

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        n, c, h, w = img.shape
        if c != self.in_channels:
            raise ValueError(f"HOGGenerator: images have {c} channels, in_channels is {self.in_channels}")
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"HOGGenerator: image {h}x{w} is not divisible by patch_size {self.patch_size}")
        x = F.pad(img.float(), (1, 1, 1, 1), mode="reflect")
        # Sobel as explicit differences (the same sums as 0.x's grouped conv with
        # [[1, 0, -1], [2, 0, -2], [1, 0, -1]] and its transpose, but a mirrored border gives an
        # exact 0, so its orientation bin does not depend on rounding): gx = sum_r (1, 2, 1)_r (left - right), gy = sum_c (1, 2, 1)_c (top - bottom).
        dx = x[..., :, :-2] - x[..., :, 2:]
        gx = dx[..., :-2, :] + 2.0 * dx[..., 1:-1, :] + dx[..., 2:, :]
        dy = x[..., :-2, :] - x[..., 2:, :]
        gy = dy[..., :-2] + 2.0 * dy[..., 1:-1] + dy[..., 2:]
        magnitude = torch.sqrt(gx ** 2 + gy ** 2)
        phase = torch.atan2(gx, gy) / math.pi * self.nbins
        if self.gkern is not None:
            g = self.gaussian_window
            if h % g or w % g:
                raise ValueError(f"HOGGenerator: image {h}x{w} is not a multiple of gaussian_window {g}")
            magnitude = magnitude * self.gkern.repeat(h // g, w // g)
        bins = torch.floor(phase).long() % self.nbins
        hist = torch.zeros(n, c, self.nbins, h, w, dtype=magnitude.dtype, device=img.device)
        hist.scatter_add_(2, bins.unsqueeze(2), magnitude.unsqueeze(2))
        p = self.pool
        hist = hist.reshape(n, c, self.nbins, h // p, p, w // p, p).sum(dim=(4, 6))
        hist = F.normalize(hist, p=2, dim=2)
        u = self.patch_size // p
        gh, gw = h // self.patch_size, w // self.patch_size
        hist = hist.reshape(n, c * self.nbins, gh, u, gw, u).permute(0, 2, 4, 1, 3, 5)
        return hist.reshape(n, gh * gw, c * self.nbins * u * u)

    def extra_repr(self) -> str:
        return (f"nbins={self.nbins}, pool={self.pool}, gaussian_window={self.gaussian_window}, "
                f"patch_size={self.patch_size}, in_channels={self.in_channels}")


def _gkern(size: int) -> torch.Tensor:
    return gaussian_window(size, size // 2)
