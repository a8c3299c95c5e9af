"""Pretext-task datasets: ``RelativeLocDataset`` (context prediction) and
``RotationPredDataset`` (rotation prediction), with MMSelfSup 0.x's outputs."""
from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from .base import BaseDataset, Compose, DataSourceLike, transform_list

GRID = 3  # patches per side
CENTRE = 4  # index of the centre cell in row-major order
#: Neighbour order of RelativeLoc's ``patch_label``: (row, column) of each label's grid cell.
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def image_size(img: Any) -> tuple[int, int]:
    """``(height, width)`` of a PIL image or a ``(..., H, W)`` tensor."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor):
        return int(img.shape[-2]), int(img.shape[-1])
    raise ValueError(f"expected a PIL image or a tensor, got {type(img).__name__}")


def grid_patches(img: Any, patch_jitter: int, owner: str = "RelativeLocDataset") -> list[Any]:
    """Cut ``img`` into a 3x3 grid of cells and crop one jittered patch from each.

    The image is split into cells of ``(H // 3, W // 3)`` pixels (leftover rows/columns at the
    bottom/right are dropped); each patch is ``(H // 3 - patch_jitter, W // 3 - patch_jitter)``
    at a uniformly random offset in ``[0, patch_jitter]`` inside its cell, so neighbouring
    patches never touch (a gap against trivial edge continuity). Works on PIL images and
    ``(C, H, W)`` tensors; returns 9 patches in row-major order (index 4 is the centre).
    """
    height, width = image_size(img)
    cell_h, cell_w = height // GRID, width // GRID
    patch_h, patch_w = cell_h - patch_jitter, cell_w - patch_jitter
    if patch_h < 1 or patch_w < 1:
        raise ValueError(
            f"{owner}: a {height}x{width} image makes {cell_h}x{cell_w} grid cells, too small for "
            f"patch_jitter = {patch_jitter}; use larger images (MMSelfSup: Resize 292, RandomCrop 255) or a "
            "smaller patch_jitter"
        )
    offsets = torch.randint(0, patch_jitter + 1, (GRID * GRID, 2)).tolist()
    patches = []
    for cell in range(GRID * GRID):
        row, col = divmod(cell, GRID)
        dy, dx = offsets[cell]
        patches.append(TF.crop(img, row * cell_h + dy, col * cell_w + dx, patch_h, patch_w))
    return patches


class RelativeLocDataset(BaseDataset):
    """Relative patch location (Doersch et al. 2015), as MMSelfSup 0.x's ``RelativeLocDataset``.

    Each sample: ``pipeline`` (e.g. Resize 292, RandomCrop 255, RandomGrayscale) on the image,
    a 3x3 grid of jittered patches (:func:`grid_patches`), ``format_pipeline`` (e.g.
    ToTensor, Normalize) on every patch, then the 8 pairs (neighbour, centre).

    Args:
        data_source: a data source.
        pipeline: transforms on the whole image (PIL image or tensor out).
        format_pipeline: transforms on each patch; must end producing a tensor (may be empty
            when ``pipeline`` already produces one).
        patch_jitter: pixels of random shift inside each cell (patch = cell - jitter);
            MMSelfSup uses 21 with 255x255 images.
        on_bad_sample: ``"error"`` or ``"skip"``.
        augment_on: ``"cpu"`` only.

    Returns per sample ``{"img": Tensor (8, 2C, h, w), "patch_label": LongTensor [0..7],
    "label": int, "idx": int}``: ``img[k]`` is the neighbour patch of label ``k`` (channels
    ``0:C``) concatenated with the centre patch (channels ``C:2C``), MMSelfSup's order.
    Labels number the neighbours row by row, skipping the centre (:data:`NEIGHBOURS`)::

        0 1 2
        3 . 4
        5 6 7
    """

    def __init__(
        self,
        data_source: DataSourceLike,
        pipeline: list,
        format_pipeline: list | None = None,
        patch_jitter: int = 21,
        on_bad_sample: str = "error",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__(data_source, on_bad_sample, augment_on)
        self.refuse_device()
        if isinstance(patch_jitter, bool) or not isinstance(patch_jitter, int) or patch_jitter < 0:
            raise ValueError(f"RelativeLocDataset: patch_jitter must be an integer >= 0, got {patch_jitter!r}")
        self.pipeline = Compose(transform_list("RelativeLocDataset", "pipeline", pipeline))
        self.format_pipeline = Compose(transform_list("RelativeLocDataset", "format_pipeline", format_pipeline))
        self.patch_jitter = patch_jitter

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img, idx = self.load(idx)
        patches = grid_patches(self.pipeline(img), self.patch_jitter)
        patches = [self.finish(self.format_pipeline(p), "format_pipeline") for p in patches]
        centre = patches[CENTRE]
        pairs = [torch.cat((patches[row * GRID + col], centre), dim=0) for row, col in NEIGHBOURS]
        return {
            "img": torch.stack(pairs),
            "patch_label": torch.arange(len(NEIGHBOURS), dtype=torch.long),
            "label": self.label_of(idx),
            "idx": idx,
        }


class RotationPredDataset(BaseDataset):
    """Rotation prediction (Gidaris et al. 2018), as MMSelfSup 0.x's ``RotationPredDataset``.

    Args:
        data_source: a data source.
        pipeline: transforms; must end producing a square tensor ``(C, S, S)``.
        on_bad_sample: ``"error"`` or ``"skip"``.
        augment_on: ``"cpu"`` only.

    Returns per sample ``{"img": Tensor (4, C, S, S), "rot_label": LongTensor [0, 1, 2, 3],
    "label": int, "idx": int}``; ``img[k]`` is the view rotated by ``k * 90`` degrees
    counter-clockwise (``torch.rot90(view, k, dims=(-2, -1))``).
    """

    def __init__(
        self,
        data_source: DataSourceLike,
        pipeline: list,
        on_bad_sample: str = "error",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__(data_source, on_bad_sample, augment_on)
        self.refuse_device()
        self.pipeline = Compose(transform_list("RotationPredDataset", "pipeline", pipeline))

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img, idx = self.load(idx)
        view = self.finish(self.pipeline(img))
        if view.shape[-1] != view.shape[-2]:
            raise ValueError(
                f"RotationPredDataset: the pipeline must produce square images to stack rotations, got "
                f"{view.shape[-2]}x{view.shape[-1]}; end it with a square crop (CenterCrop, RandomResizedCrop)"
            )
        return {
            "img": torch.stack([torch.rot90(view, k, dims=(-2, -1)) for k in range(4)]),
            "rot_label": torch.arange(4, dtype=torch.long),
            "label": self.label_of(idx),
            "idx": idx,
        }
