"""Mask generators for masked image modelling (SimMIM, BEiT), used as pipeline transforms.

Convention for transforms with extra outputs (the datasets honour it):

    A transform that produces more than an image returns a dict ``{"img": image, "mask": mask}``
    (``"img"`` always present, any further keys allowed). The pipeline runner
    (:func:`selfsup_data.transforms.apply_transforms`) passes ``out["img"]`` on to the next
    transform and the dataset merges the other keys into the sample dict, so a sample becomes
    ``{"img": ..., "mask": BoolTensor, "label": ..., "idx": ...}`` and ``default_collate``
    stacks masks to ``(N, h, w)``. A mask generator given such a dict adds its key to it.
    Put mask generators last in a pipeline (after ToImage/Normalize) by habit; they do not
    look at the pixels.

Masks are ``torch.bool`` tensors, ``True`` = masked. Randomness comes from torch's global
RNG (per call), so ``torch.manual_seed`` makes them reproducible.
"""
from __future__ import annotations

import math
from typing import Any, Union

import torch
from torch import nn

__all__ = ["BEiTMaskGenerator", "BlockwiseMaskGenerator", "MaskingGenerator", "SimMIMMaskGenerator"]


def _with_mask(img: Any, mask: torch.Tensor) -> dict[str, Any]:
    if isinstance(img, dict):
        if "img" not in img:
            raise ValueError("mask generator: a dict input needs an 'img' key")
        return {**img, "mask": mask}
    return {"img": img, "mask": mask}


def _pair(value: Union[int, tuple, list], owner: str, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ValueError(f"{owner}: {name} must be a positive int or a pair of them, got {value!r}")
    return int(value[0]), int(value[1])


class SimMIMMaskGenerator(nn.Module):
    """SimMIM random masking: masks whole ``mask_patch_size`` squares, returned at model-patch
    resolution.

    The image (``input_size`` pixels square) is cut into ``(input_size / mask_patch_size)**2``
    mask patches; ``ceil(mask_ratio * that count)`` of them, chosen uniformly without
    replacement, are masked, in floating point exactly as SimMIM and MMSelfSup 0.x compute it
    (``int(np.ceil(count * ratio))``): float noise counts, e.g. ``100 * 0.07 =
    7.000000000000001`` masks 8 of 100. Each masked mask patch covers
    ``(mask_patch_size / model_patch_size)**2`` entries of the returned mask.

    Args:
        input_size: image side in pixels (divisible by mask_patch_size).
        mask_patch_size: side of a masked square in pixels (divisible by model_patch_size).
        model_patch_size: the backbone's patch size in pixels.
        mask_ratio: fraction of mask patches to mask, in [0, 1].
    Returns (when called on an image): ``{"img": img, "mask": BoolTensor (H/model_patch, W/model_patch)}``.
    """

    def __init__(self, input_size: int = 192, mask_patch_size: int = 32, model_patch_size: int = 4,
                 mask_ratio: float = 0.6) -> None:
        super().__init__()
        if input_size <= 0 or mask_patch_size <= 0 or model_patch_size <= 0:
            raise ValueError("SimMIMMaskGenerator: input_size, mask_patch_size and model_patch_size must be positive")
        if input_size % mask_patch_size:
            raise ValueError(f"SimMIMMaskGenerator: input_size={input_size} must be divisible by "
                             f"mask_patch_size={mask_patch_size}")
        if mask_patch_size % model_patch_size:
            raise ValueError(f"SimMIMMaskGenerator: mask_patch_size={mask_patch_size} must be divisible by "
                             f"model_patch_size={model_patch_size}")
        if not 0.0 <= mask_ratio <= 1.0:
            raise ValueError(f"SimMIMMaskGenerator: mask_ratio must be in [0, 1], got {mask_ratio}")
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = float(mask_ratio)
        self.rand_size = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.token_count = self.rand_size ** 2
        self.mask_count = min(self.token_count, math.ceil(self.token_count * self.mask_ratio))

    def generate(self) -> torch.Tensor:
        """One mask: BoolTensor (input_size/model_patch_size, input_size/model_patch_size)."""
        chosen = torch.randperm(self.token_count)[: self.mask_count]
        mask = torch.zeros(self.token_count, dtype=torch.bool)
        mask[chosen] = True
        mask = mask.view(self.rand_size, self.rand_size)
        return mask.repeat_interleave(self.scale, 0).repeat_interleave(self.scale, 1)

    def forward(self, img: Any) -> dict[str, Any]:
        return _with_mask(img, self.generate())

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
                f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}")


class BlockwiseMaskGenerator(nn.Module):
    """BEiT block-wise masking on a grid of patches.

    Rectangles of random area (``min_num_patches`` .. ``max_num_patches`` patches) and log-uniform
    aspect ratio (``min_aspect`` .. ``max_aspect``) are added, each adding at most the number of
    patches still missing, until exactly ``num_masking_patches`` patches are masked. A
    rectangle always lies inside the grid.

    Args:
        input_size: grid size in patches (``14`` or ``[14, 14]`` for 224 px and 16 px patches).
        num_masking_patches: how many patches to mask (<= grid area).
        min_num_patches: smallest area of one rectangle, in patches (BEiT's configs use 16).
        max_num_patches: largest area of one rectangle; ``None`` -> num_masking_patches.
        min_aspect: smallest height/width ratio of a rectangle (> 0).
        max_aspect: largest ratio; ``None`` -> ``1 / min_aspect``.
    Returns (when called on an image): ``{"img": img, "mask": BoolTensor (h, w)}``.

    Note: in MMSelfSup 0.x the name ``BlockwiseMaskGenerator`` belonged to SimMIM's generator
    (``mask_patch_size``, ``model_patch_size``, ``mask_ratio``); here that is
    :class:`SimMIMMaskGenerator`, and BEiT's 0.x ``MaskingGenerator`` is an alias of this class.
    """

    def __init__(self, input_size: Union[int, list[int], tuple[int, int]], num_masking_patches: int,
                 min_num_patches: int = 4, max_num_patches: Union[int, None] = None, min_aspect: float = 0.3,
                 max_aspect: Union[float, None] = None) -> None:
        super().__init__()
        name = type(self).__name__
        self.height, self.width = _pair(input_size, name, "input_size")
        self.num_patches = self.height * self.width
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(f"{name}: num_masking_patches={num_masking_patches} must be in [0, {self.num_patches}] "
                             f"for input_size {self.height}x{self.width}")
        max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        if min_num_patches < 1 or max_num_patches < 0:
            raise ValueError(f"{name}: need min_num_patches >= 1 and max_num_patches >= 0, got {min_num_patches} "
                             f"and {max_num_patches}")
        max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
        if not 0 < min_aspect <= max_aspect:
            raise ValueError(f"{name}: need 0 < min_aspect <= max_aspect, got {min_aspect} and {max_aspect}")
        self.num_masking_patches = int(num_masking_patches)
        self.min_num_patches = int(min_num_patches)
        self.max_num_patches = int(max_num_patches)
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * torch.rand(1).item()

    def _add_block(self, mask: torch.Tensor, max_mask_patches: int) -> int:
        """Try (10 times) to mask one new rectangle adding 1..max_mask_patches patches; returns how many."""
        for _ in range(10):
            target_area = self._uniform(self.min_num_patches, max_mask_patches)
            aspect = math.exp(self._uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= self.width and 0 < h <= self.height:
                top = int(torch.randint(0, self.height - h + 1, (1,)))
                left = int(torch.randint(0, self.width - w + 1, (1,)))
                block = mask[top:top + h, left:left + w]
                new = h * w - int(block.sum())
                if 0 < new <= max_mask_patches:
                    block.fill_(True)
                    return new
        return 0

    def generate(self) -> torch.Tensor:
        """One mask: BoolTensor (height, width) with exactly num_masking_patches True entries."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        stalled = 0
        while count < self.num_masking_patches:
            missing = self.num_masking_patches - count
            delta = self._add_block(mask, min(missing, self.max_num_patches))
            count += delta
            stalled = stalled + 1 if delta == 0 else 0
            if stalled >= 20 or missing < self.min_num_patches and delta == 0:
                # Rectangles cannot fit the few patches left: mask random free patches instead.
                free = (~mask).flatten().nonzero().flatten()
                extra = free[torch.randperm(free.numel())[:missing]]
                mask.view(-1)[extra] = True
                count += extra.numel()
        return mask

    def forward(self, img: Any) -> dict[str, Any]:
        return _with_mask(img, self.generate())

    def extra_repr(self) -> str:
        return (f"input_size=({self.height}, {self.width}), num_masking_patches={self.num_masking_patches}, "
                f"min_num_patches={self.min_num_patches}, max_num_patches={self.max_num_patches}, "
                f"log_aspect_ratio={self.log_aspect_ratio}")


class BEiTMaskGenerator(BlockwiseMaskGenerator):
    """Same as :class:`BlockwiseMaskGenerator` (the MMSelfSup 1.x name)."""


class MaskingGenerator(BlockwiseMaskGenerator):
    """Same as :class:`BlockwiseMaskGenerator` (the MMSelfSup 0.x / BEiT name)."""
