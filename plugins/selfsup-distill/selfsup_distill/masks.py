"""iBOT's blockwise mask sampler (BEiT-style blocks, a random ratio per image)."""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch


class BlockMaskSampler:
    """Blockwise masks of a ``grid = (H, W)`` patch grid, one image at a time (iBOT's
    ``pred_shape = "block"``).

    Each image is masked with probability ``mask_prob`` (0.5); a masked image draws its ratio
    ``r`` uniformly from ``ratio_range`` (0.1-0.5, iBOT's ``pred_ratio 0.3 +- 0.2``) and gets
    rectangles of area ``uniform(min(H, W) // 3) ** 2, remaining)`` and aspect ratio
    log-uniform in ``aspect_range`` until ``r * H * W`` patches are masked or no rectangle adds
    any; the masked count never exceeds ``r * H * W``.

    Args:
        grid: the patch grid ``(H, W)`` (e.g. 14 x 14 for 224 px at patch 16).
        ratio_range: ``(low, high)`` bounds of the masked fraction of a masked image.
        mask_prob: probability that an image is masked at all.
        aspect_range: ``(low, high)`` aspect ratios of the rectangles.
        rng: the random source (``random.Random``).
    """

    def __init__(self, grid: Sequence[int], ratio_range: Sequence[float] = (0.1, 0.5), mask_prob: float = 0.5,
                 aspect_range: Sequence[float] = (0.3, 1 / 0.3), rng: random.Random | None = None) -> None:
        low, high = (float(v) for v in ratio_range)
        if not 0.0 <= low <= high < 1.0:
            raise ValueError(f"mask ratio_range must satisfy 0 <= low <= high < 1, got {list(ratio_range)}")
        if not 0.0 <= mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
        self.grid = (int(grid[0]), int(grid[1]))
        self.ratio_range = (low, high)
        self.mask_prob = float(mask_prob)
        self.log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
        self.rng = rng or random.Random(0)

    def sample(self) -> torch.Tensor:
        """One ``(H, W)`` bool mask (true = masked)."""
        h_grid, w_grid = self.grid
        mask = torch.zeros(h_grid, w_grid, dtype=torch.bool)
        if self.rng.random() >= self.mask_prob:
            return mask
        target = self.rng.uniform(*self.ratio_range) * h_grid * w_grid
        count = 0
        low_area = (min(h_grid, w_grid) // 3) ** 2
        while count < target:
            remaining = target - count
            added = 0
            for _ in range(10):
                area = self.rng.uniform(low_area, remaining)
                aspect = math.exp(self.rng.uniform(*self.log_aspect))
                h = int(round(math.sqrt(area * aspect)))
                w = int(round(math.sqrt(area / aspect)))
                if 0 < h < h_grid and 0 < w < w_grid:
                    top = self.rng.randint(0, h_grid - h)
                    left = self.rng.randint(0, w_grid - w)
                    block = mask[top:top + h, left:left + w]
                    new = h * w - int(block.sum())
                    if 0 < new <= remaining:
                        block.fill_(True)
                        added = new
                if added:
                    break
            if not added:
                break
            count += added
        return mask

    def __call__(self, batch: int) -> torch.Tensor:
        """``(batch, H, W)`` bool masks, drawn independently."""
        return torch.stack([self.sample() for _ in range(batch)])


__all__ = ["BlockMaskSampler"]
