"""Self-supervised augmentations that torchvision does not have, in MMSelfSup 0.x names.

Every torchvision.transforms.v2 class is registered under its own name too (entry points in
``pyproject.toml``); the classes here add to them or, for ``GaussianBlur`` and ``ToDtype``,
take the name over:

- :class:`RandomAppliedTrans` ``(transforms, p=0.5)``: apply a list of transforms with
  probability ``p`` (one draw for the whole list).
- :class:`GaussianBlur` ``(sigma_min=0.1, sigma_max=2.0, p=0.5, kernel_size=None)``: SimCLR/BYOL
  blur with a random sigma per image (replaces torchvision's ``GaussianBlur``).
- :class:`Solarization` ``(threshold=128, p=0.5)``: BYOL solarisation.
- :class:`Lighting` ``(alphastd=0.1, eigval=..., eigvec=...)``: AlexNet PCA colour noise.
- :class:`ToDtype` ``(dtype="float32", scale=False)``: torchvision's ``ToDtype`` that also takes
  a dtype *name*, so it can be written in TOML.

Inputs: PIL images, ``uint8`` tensors ``(C, H, W)`` (0..255) and float tensors ``(C, H, W)``
(0..1). Outputs keep the input's kind and dtype. Random parameters come from torch's global
RNG (``torch.manual_seed`` makes a pipeline reproducible), drawn once per call.

The blur is a true Gaussian convolution (reflect padding) for every input kind, PIL images
included (MMSelfSup used PIL's box-filter approximation); the same kernel is used by the
batched device path (:mod:`selfsup_data.device_augment`), so both paths agree.

Pipelines that contain transforms returning several outputs (mask generators, see
:mod:`selfsup_data.masks`) are run with :func:`apply_transforms`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "GaussianBlur",
    "Lighting",
    "RandomAppliedTrans",
    "Solarization",
    "ToDtype",
    "apply_transforms",
    "blur_batch",
    "gaussian_kernels",
]

# Principal components of ImageNet RGB pixels (0..1 scale), as in AlexNet / fb.resnet.torch.
IMAGENET_EIGVAL: tuple[float, float, float] = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC: tuple[tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


# -- helpers shared with the device path ----------------------------------------------------------
def _check_p(owner: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{owner}: p must be a probability in [0, 1], got {p}")
    return float(p)


def _rewrap(out: torch.Tensor, like: Any) -> Any:
    """``out`` as the same tv_tensor subclass as ``like`` (plain tensors stay plain)."""
    if isinstance(like, tv_tensors.TVTensor):
        return tv_tensors.wrap(out, like=like)
    return out


def _to_float(img: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """An image as a float (C, H, W) tensor in 0..1, and a function that converts back."""
    if isinstance(img, Image.Image):
        mode = img.mode
        x = TF.pil_to_tensor(img).float().div_(255)

        def back_pil(y: torch.Tensor) -> Image.Image:
            arr = y.mul(255).round_().clamp_(0, 255).to(torch.uint8)
            return TF.to_pil_image(arr, mode=mode)

        return x, back_pil
    if isinstance(img, torch.Tensor):
        if img.is_floating_point():
            return img.as_subclass(torch.Tensor), lambda y: _rewrap(y.to(img.dtype), img)
        if img.dtype != torch.uint8:
            raise TypeError(f"expected a uint8 or float image tensor, got dtype {img.dtype}")
        return img.as_subclass(torch.Tensor).float().div(255), lambda y: _rewrap(
            y.mul(255).round_().clamp_(0, 255).to(torch.uint8), img
        )
    raise TypeError(f"expected a PIL image or a (C, H, W) tensor, got {type(img).__name__}")


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma.

    Args:
        sigma: (N,) standard deviations in pixels.
        kernel_size: odd number of taps.
    Returns:
        (N, kernel_size) float tensor, each row summing to 1.
    """
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=sigma.device, dtype=torch.float32)
    weights = torch.exp(-(x[None, :] ** 2) / (2 * sigma.float()[:, None] ** 2))
    return weights / weights.sum(dim=1, keepdim=True)


def default_kernel_size(sigma_max: float) -> int:
    """Odd kernel size that covers +-3 sigma of the widest blur: ``2 * ceil(3 * sigma_max) + 1``."""
    return 2 * math.ceil(3 * sigma_max) + 1


def blur_batch(x: torch.Tensor, sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image, as a grouped convolution.

    Args:
        x: (N, C, H, W) float images.
        sigma: (N,) standard deviations (on x's device).
        kernel_size: odd kernel size used for every image.
    Returns:
        (N, C, H, W) blurred images; borders use reflect padding (replicate when the image is
        too small to reflect).
    """
    n, c, h, w = x.shape
    kernels = gaussian_kernels(sigma, kernel_size).to(x.dtype)  # (N, K)
    weight = kernels.repeat_interleave(c, dim=0)  # (N*C, K): one kernel per (image, channel)
    pad = kernel_size // 2
    y = x.reshape(1, n * c, h, w)
    mode_w = "reflect" if pad < w else "replicate"
    mode_h = "reflect" if pad < h else "replicate"
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode=mode_w), weight[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode=mode_h), weight[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def apply_transforms(transforms: Sequence[Callable[[Any], Any]], img: Any) -> dict[str, Any]:
    """Run a pipeline that may contain transforms producing extra outputs.

    A transform returns either an image or a dict ``{"img": image, <extra keys>: ...}`` (the
    mask generators of :mod:`selfsup_data.masks`). The next transform receives only the
    image; extra keys are collected, later ones overwriting earlier ones.

    Returns:
        ``{"img": final image, **extra keys}``.
    """
    extras: dict[str, Any] = {}
    for transform in transforms:
        out = transform(img)
        if isinstance(out, dict):
            if "img" not in out:
                raise ValueError(f"{type(transform).__name__} returned a dict without an 'img' key")
            extras.update({k: v for k, v in out.items() if k != "img"})
            img = out["img"]
        else:
            img = out
    return {"img": img, **extras}


# -- transforms --------------------------------------------------------------------------------------
class RandomAppliedTrans(nn.Module):
    """Apply ``transforms`` in order with probability ``p``, else return the input unchanged.

    Args:
        transforms: built transforms (the config's list of tables; the core builds them).
        p: probability of applying the whole list (one draw per call, ``torch.rand(1) < p``).
    """

    def __init__(self, transforms: list, p: float = 0.5) -> None:
        super().__init__()
        if not isinstance(transforms, (list, tuple)) or not all(callable(t) for t in transforms):
            raise ValueError("RandomAppliedTrans: transforms must be a list of transforms")
        self.transforms = list(transforms)
        self.p = _check_p("RandomAppliedTrans", p)

    def forward(self, img: Any) -> Any:
        if torch.rand(1).item() >= self.p:
            return img
        for transform in self.transforms:
            img = transform(img)
        return img

    def extra_repr(self) -> str:
        return f"transforms={self.transforms}, p={self.p}"


class GaussianBlur(nn.Module):
    """SimCLR/BYOL Gaussian blur: with probability ``p``, blur with sigma ~ U(sigma_min, sigma_max).

    Args:
        sigma_min: smallest standard deviation in pixels (> 0).
        sigma_max: largest standard deviation in pixels (>= sigma_min). Equal values give a
            fixed sigma.
        p: probability of blurring an image.
        kernel_size: odd kernel size; ``None`` -> ``2 * ceil(3 * sigma_max) + 1`` (13 for
            sigma_max=2). SimCLR used about a tenth of the image side (23 at 224 px).
    Returns (when called on an image): the image, blurred or not, of the same kind and dtype.
    """

    def __init__(self, sigma_min: float = 0.1, sigma_max: float = 2.0, p: float = 0.5,
                 kernel_size: Union[int, None] = None) -> None:
        super().__init__()
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"GaussianBlur: need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if kernel_size is not None and (kernel_size < 1 or kernel_size % 2 == 0):
            raise ValueError(f"GaussianBlur: kernel_size must be a positive odd integer, got {kernel_size}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.p = _check_p("GaussianBlur", p)
        self.kernel_size = int(kernel_size) if kernel_size is not None else default_kernel_size(sigma_max)

    def forward(self, img: Any) -> Any:
        if torch.rand(1).item() >= self.p:
            return img
        sigma = torch.empty(1).uniform_(self.sigma_min, self.sigma_max)
        x, back = _to_float(img)
        return back(blur_batch(x[None], sigma, self.kernel_size)[0])

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, p={self.p}, kernel_size={self.kernel_size}"


class Solarization(nn.Module):
    """BYOL solarisation: with probability ``p``, every pixel value ``v >= threshold`` becomes
    ``255 - v``; values below the threshold are unchanged (MMSelfSup 0.x semantics).

    The threshold is on the 0..255 scale. Float images (0..1) use ``v >= threshold / 255``
    and ``1 - v``.

    Args:
        threshold: values at or above it are inverted (0..256; 256 inverts nothing).
        p: probability of solarising an image.
    """

    def __init__(self, threshold: float = 128, p: float = 0.5) -> None:
        super().__init__()
        if not 0 <= threshold <= 256:
            raise ValueError(f"Solarization: threshold must be in [0, 256] (0..255 pixel scale), got {threshold}")
        self.threshold = float(threshold)
        self.p = _check_p("Solarization", p)

    def forward(self, img: Any) -> Any:
        if torch.rand(1).item() >= self.p:
            return img
        if isinstance(img, Image.Image):
            arr = np.asarray(img)
            return Image.fromarray(np.where(arr >= self.threshold, 255 - arr, arr).astype(np.uint8), mode=img.mode)
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"Solarization: expected a PIL image or a tensor, got {type(img).__name__}")
        x = img.as_subclass(torch.Tensor)
        if x.is_floating_point():
            out = torch.where(x >= self.threshold / 255, 1 - x, x)
        else:
            out = torch.where(x >= self.threshold, 255 - x, x)
        return _rewrap(out, img)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, p={self.p}"


class Lighting(nn.Module):
    """AlexNet-style PCA colour noise: adds ``eigvec @ (alpha * eigval)`` to the R, G, B channels,
    with ``alpha ~ N(0, alphastd)`` drawn per image (3 values).

    Works on the 0..1 scale: float tensors are changed without clamping (as MMSelfSup, which
    applies it after ToTensor); uint8 tensors and PIL images are converted to 0..1, noised,
    then rounded and clamped back.

    Args:
        alphastd: standard deviation of the per-component weights; 0 -> identity.
        eigval: 3 eigenvalues (defaults: ImageNet's).
        eigvec: 3x3 matrix whose columns are the eigenvectors (defaults: ImageNet's).
    """

    def __init__(self, alphastd: float = 0.1, eigval: Sequence[float] = IMAGENET_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC) -> None:
        super().__init__()
        if alphastd < 0:
            raise ValueError(f"Lighting: alphastd must be >= 0, got {alphastd}")
        val = torch.as_tensor(eigval, dtype=torch.float32)
        vec = torch.as_tensor(eigvec, dtype=torch.float32)
        if val.shape != (3,) or vec.shape != (3, 3):
            raise ValueError(f"Lighting: eigval must have 3 values and eigvec be 3x3, got shapes "
                             f"{tuple(val.shape)} and {tuple(vec.shape)}")
        self.alphastd = float(alphastd)
        self.register_buffer("eigval", val, persistent=False)
        self.register_buffer("eigvec", vec, persistent=False)

    def noise(self, alpha: torch.Tensor) -> torch.Tensor:
        """RGB offsets for weights ``alpha`` (..., 3) -> (..., 3): ``eigvec @ (alpha * eigval)``."""
        return (alpha * self.eigval.to(alpha)) @ self.eigvec.to(alpha).T

    def forward(self, img: Any) -> Any:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        x, back = _to_float(img)
        if x.shape[-3] != 3:
            raise ValueError(f"Lighting: needs an RGB image (3 channels), got {x.shape[-3]}")
        return back(x + self.noise(alpha).to(x.dtype)[:, None, None])

    def extra_repr(self) -> str:
        return f"alphastd={self.alphastd}"


_DTYPES = {
    "float32": torch.float32, "float": torch.float32, "float16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "float64": torch.float64, "double": torch.float64, "uint8": torch.uint8,
    "int64": torch.int64, "long": torch.int64, "int32": torch.int32,
}


class ToDtype(v2.ToDtype):
    """torchvision's ``ToDtype`` that also accepts a dtype name (``"float32"``, ``"uint8"`` ...).

    Args:
        dtype: a ``torch.dtype`` or its name (torchvision's per-type dict is keyed by Python
            types, which a TOML config cannot name, so it is not accepted).
        scale: rescale values between integer and float ranges (uint8 0..255 <-> float 0..1).
    """

    def __init__(self, dtype: Union[str, torch.dtype] = "float32", scale: bool = False) -> None:
        if isinstance(dtype, str):
            name = dtype.removeprefix("torch.")
            if name not in _DTYPES:
                raise ValueError(f"ToDtype: unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
            dtype = _DTYPES[name]
        super().__init__(dtype=dtype, scale=scale)
