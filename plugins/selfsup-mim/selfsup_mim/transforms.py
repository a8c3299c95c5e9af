"""CAE's two-resolution crop (MMSelfSup 0.x / BEiT ``RandomResizedCropAndInterpolationWithTwoPic``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

__all__ = ["RandomResizedCropAndInterpolationWithTwoPic"]

_MODES = {"nearest": InterpolationMode.NEAREST, "bilinear": InterpolationMode.BILINEAR,
          "bicubic": InterpolationMode.BICUBIC, "lanczos": InterpolationMode.LANCZOS,
          "box": InterpolationMode.BOX, "hamming": InterpolationMode.HAMMING}


def _mode(name: str, key: str) -> InterpolationMode:
    if name not in _MODES:
        raise ValueError(f"RandomResizedCropAndInterpolationWithTwoPic: {key} must be one of {', '.join(_MODES)}, "
                         f"got {name!r}")
    return _MODES[name]


class RandomResizedCropAndInterpolationWithTwoPic(nn.Module):
    """One random resized crop, resized twice: to ``size`` for the encoder (the image the rest
    of the pipeline transforms) and to ``second_size`` for the tokenizer, returned as
    ``"img_target"``: a float tensor ``(C, s, s)`` with pixels in [0, 1].

    Args:
        size: encoder image side (224).
        second_size: tokenizer image side (112); ``None`` = no second image.
        scale, ratio: crop area fraction and aspect-ratio ranges (as ``RandomResizedCrop``).
        interpolation, second_interpolation: ``bilinear``, ``bicubic``, ``lanczos``, ... (lanczos
            needs PIL images; tensors fall back to antialiased bicubic).
    """

    def __init__(self, size: Union[int, Sequence[int]], second_size: Union[int, None] = None,
                 scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: str = "bilinear", second_interpolation: str = "lanczos") -> None:
        super().__init__()
        self.size = [size, size] if isinstance(size, int) else list(size)
        self.second_size = None if second_size is None else [second_size, second_size] if isinstance(
            second_size, int) else list(second_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        if not 0 < self.scale[0] <= self.scale[1] or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError("RandomResizedCropAndInterpolationWithTwoPic: scale and ratio must be increasing "
                             "positive pairs")
        self.interpolation = _mode(interpolation, "interpolation")
        self.second_interpolation = _mode(second_interpolation, "second_interpolation")

    @staticmethod
    def _resize(img: Any, box: tuple[int, int, int, int], size: list[int], mode: InterpolationMode) -> Any:
        if isinstance(img, torch.Tensor) and mode in (InterpolationMode.LANCZOS, InterpolationMode.BOX,
                                                      InterpolationMode.HAMMING):
            mode = InterpolationMode.BICUBIC
        return TF.resized_crop(img, *box, size=size, interpolation=mode, antialias=True)

    def forward(self, img: Any) -> Any:
        box = RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        first = self._resize(img, box, self.size, self.interpolation)
        if self.second_size is None:
            return first
        second = self._resize(img, box, self.second_size, self.second_interpolation)
        second = TF.to_dtype(TF.to_image(second), torch.float32, scale=True).clamp_(0.0, 1.0)
        return {"img": first, "img_target": second.as_subclass(torch.Tensor)}

    def extra_repr(self) -> str:
        return (f"size={self.size}, second_size={self.second_size}, scale={self.scale}, ratio={self.ratio}, "
                f"interpolation={self.interpolation.value}, second_interpolation={self.second_interpolation.value}")

