"""I-JEPA's multi-block mask sampler (Assran et al., CVPR 2023, Sec. 3 and Appendix A.1).

For a batch of images cut into a ``height x width`` patch grid it draws, per image:

* ``num_targets`` target blocks (4 in the paper), rectangles of a random scale in
  ``target_scale`` (0.15-0.2 of the image) and aspect ratio ``h / w`` in
  ``target_aspect_ratio`` (0.75-1.5); they may overlap one another;
* one context block of scale ``context_scale`` (0.85-1.0) and aspect ratio
  ``context_aspect_ratio`` (1: a square), from which every target patch is then removed, so
  the context never shows what it must predict.

As in the paper, one target size and one context size are drawn per batch (their positions
per image), so every target block of the batch has the same number of patches; the context
counts differ after the removal and are cut to the smallest of the batch by dropping randomly
chosen patches of the larger ones. An image whose context keeps fewer than ``min_keep``
patches is drawn again (targets and context), up to ``max_tries`` times.

The paper samples the masks in the data loader's collate function; here the algorithm calls
the sampler once per training step, vectorised over the batch, on the images' device.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["MultiBlockMaskGenerator", "block_size"]


def _range(value: Sequence[float], name: str, low: float, high: float) -> tuple[float, float]:
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not low <= pair[0] <= pair[1] <= high:
        raise ValueError(f"IJEPA: {name} must be [min, max] with {low} <= min <= max <= {high}, got {list(value)}")
    return pair[0], pair[1]


def block_size(r_scale: float, r_aspect: float, scale: tuple[float, float], aspect_ratio: tuple[float, float],
               grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` in patches of a block for two uniform draws ``r_scale, r_aspect`` in [0, 1).

    ``s = scale_min + r_scale (scale_max - scale_min)`` and ``a = ar_min + r_aspect (ar_max -
    ar_min)``; the block covers ``n = int(H W s)`` patches with ``h / w = a``:
    ``h = round(sqrt(n a))``, ``w = round(sqrt(n / a))``, each clipped to ``1 .. H`` (``W``).
    Called once per batch for the targets and once for the context.
    """
    height, width = grid
    s = scale[0] + r_scale * (scale[1] - scale[0])
    a = aspect_ratio[0] + r_aspect * (aspect_ratio[1] - aspect_ratio[0])
    n = int(height * width * s)
    h = int(round(math.sqrt(n * a)))
    w = int(round(math.sqrt(n / a)))
    return min(max(h, 1), height), min(max(w, 1), width)


class MultiBlockMaskGenerator:
    """Context and target patch indices for a batch (see the module docstring).

    Args:
        grid: the patch grid ``(H, W)`` (14 x 14 for ViT-B/16 at 224 px).
        num_targets: target blocks per image (4).
        target_scale, target_aspect_ratio: ranges of the target blocks ((0.15, 0.2), (0.75, 1.5)).
        context_scale, context_aspect_ratio: ranges of the context block ((0.85, 1.0), (1, 1)).
        min_keep: the fewest context patches an image may keep (10 in the paper's code).
        max_tries: draws of the images whose context is too small before giving up with a
            ``ValueError``.

    ``sampler(batch_size, generator=None, device=None) -> (context (B, Lc), targets (num_targets, B, Lt))``:
    long tensors of row-major patch indices (``r * W + c``), increasing along the last axis;
    ``generator`` is a ``torch.Generator`` (the global RNG when ``None``); the masks are drawn
    on ``device`` (the generator's when one is given; the CPU by default).
    """

    def __init__(self, grid: Sequence[int], num_targets: int = 4, target_scale: Sequence[float] = (0.15, 0.2),
                 target_aspect_ratio: Sequence[float] = (0.75, 1.5), context_scale: Sequence[float] = (0.85, 1.0),
                 context_aspect_ratio: Sequence[float] = (1.0, 1.0), min_keep: int = 10, max_tries: int = 50) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        if num_targets < 1:
            raise ValueError(f"IJEPA: num_targets must be >= 1, got {num_targets}")
        if not 1 <= min_keep < self.grid[0] * self.grid[1]:
            raise ValueError(f"IJEPA: min_keep must be in 1..{self.grid[0] * self.grid[1] - 1} for a "
                             f"{self.grid[0]}x{self.grid[1]} patch grid, got {min_keep}")
        self.num_targets = int(num_targets)
        self.target_scale = _range(target_scale, "target_scale", 0.0, 1.0)
        self.target_aspect_ratio = _range(target_aspect_ratio, "target_aspect_ratio", 1e-3, 1e3)
        self.context_scale = _range(context_scale, "context_scale", 0.0, 1.0)
        self.context_aspect_ratio = _range(context_aspect_ratio, "context_aspect_ratio", 1e-3, 1e3)
        self.min_keep = int(min_keep)
        self.max_tries = int(max_tries)

    def _blocks(self, size: tuple[int, int], u: torch.Tensor) -> torch.Tensor:
        """Boolean masks ``(*u.shape[:-1], H, W)`` of blocks of ``size`` placed by the uniform
        draws ``u (..., 2)`` (top row, left column)."""
        height, width = self.grid
        h, w = size
        top = (u[..., 0] * (height - h + 1)).long().clamp(max=height - h)
        left = (u[..., 1] * (width - w + 1)).long().clamp(max=width - w)
        rows = torch.arange(height, device=u.device)
        cols = torch.arange(width, device=u.device)
        in_rows = (rows >= top[..., None]) & (rows < top[..., None] + h)
        in_cols = (cols >= left[..., None]) & (cols < left[..., None] + w)
        return in_rows[..., :, None] & in_cols[..., None, :]

    def _draw(self, count: int, target_size: tuple[int, int], context_size: tuple[int, int],
              generator: torch.Generator | None, device: torch.device | str | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` images' target masks ``(count, T, H, W)`` and context masks ``(count, H, W)``
        (targets already removed from the context)."""
        u = torch.rand(count, self.num_targets + 1, 2, generator=generator, device=device)
        targets = self._blocks(target_size, u[:, :-1])
        context = self._blocks(context_size, u[:, -1]) & ~targets.any(dim=1)
        return targets, context

    def __call__(self, batch_size: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if generator is not None:
            device = generator.device
        r = torch.rand(4, generator=generator, device=device).tolist()
        target_size = block_size(r[0], r[1], self.target_scale, self.target_aspect_ratio, self.grid)
        context_size = block_size(r[2], r[3], self.context_scale, self.context_aspect_ratio, self.grid)
        targets, context = self._draw(batch_size, target_size, context_size, generator, device)
        for _ in range(self.max_tries - 1):   # draw again the images whose context is too small
            short = (context.flatten(1).sum(dim=1) < self.min_keep).nonzero().flatten()
            if short.numel() == 0:
                break
            targets[short], context[short] = self._draw(short.numel(), target_size, context_size, generator, device)
        counts = context.flatten(1).sum(dim=1)
        if int(counts.min()) < self.min_keep:
            raise ValueError(
                f"IJEPA: no context of at least min_keep = {self.min_keep} patches left after removing "
                f"{self.num_targets} target blocks of {target_size[0]}x{target_size[1]} from a "
                f"{context_size[0]}x{context_size[1]} context in {self.max_tries} draws; lower model.min_keep, "
                "model.num_targets or model.target_scale")
        length = target_size[0] * target_size[1]
        target_idx = targets.flatten(2).nonzero()[:, 2].view(batch_size, self.num_targets, length)
        # the same number of context patches for every image: a random subset of the smallest size
        keep = int(counts.min())
        score = torch.rand(context.flatten(1).shape, generator=generator, device=device).masked_fill(~context.flatten(1), -1.0)
        context_idx = score.topk(keep, dim=1).indices.sort(dim=1).values
        return context_idx, target_idx.transpose(0, 1).contiguous()
