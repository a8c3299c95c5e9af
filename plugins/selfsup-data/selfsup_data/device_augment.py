"""Augmentation of whole batches on the training device (GPU), split off a CPU pipeline.

Workers decode, crop and resize on the CPU and ship small ``uint8`` tensors; colour jitter,
grayscale, blur, solarisation, flips and normalisation then run batched on the device:

    cpu_transforms, device_module = split_pipeline(built_pipeline)
    # dataset workers: sample = apply_transforms(cpu_transforms, pil_image)  -> uint8 (C, H, W)
    dataset.device_transform = BatchDeviceTransform([device_module] * num_views)
    # trainer, after moving the batch to the device, under no_grad:
    batch = dataset.device_transform(batch)   # img: float32, normalised

Every device op draws its random parameters per sample on the batch's device (application
masks, jitter factors, a random jitter order per sample as torchvision's ColorJitter, blur
sigmas) and applies them with tensor ops over the whole batch: no Python loop over samples,
no host synchronisation. The distribution of outputs is the CPU pipeline's; the values
differ from a PIL/uint8 CPU pipeline only by its intermediate rounding (<= ~1/255 per op).

Internally images are float32 in 0..1 from the first device op on. The output is float32:
normalised if the pipeline has a ``Normalize``, else in 0..1 (or 0..255 after
``ToDtype(float, scale=False)`` on uint8 images, as on the CPU).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as v1
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .transforms import GaussianBlur, Lighting, RandomAppliedTrans, Solarization, blur_batch

__all__ = ["BatchDeviceTransform", "DeviceAugment", "ToUint8CHW", "split_pipeline"]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


# -- the CPU end of a split pipeline -------------------------------------------------------------------
class ToUint8CHW(nn.Module):
    """Convert a PIL image, HWC numpy array or (C, H, W) tensor to a plain ``uint8`` (C, H, W) tensor.

    Float tensors are taken as 0..1 and rounded. This ends the CPU part of a split pipeline.
    """

    def forward(self, img: Any) -> torch.Tensor:
        if isinstance(img, Image.Image):
            return TF.pil_to_tensor(img).as_subclass(torch.Tensor)
        if isinstance(img, np.ndarray):
            arr = img[:, :, None] if img.ndim == 2 else img
            img = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"ToUint8CHW: expected a PIL image, array or tensor, got {type(img).__name__}")
        x = img.as_subclass(torch.Tensor)
        if x.is_floating_point():
            return x.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        return x.to(torch.uint8)


# -- batched ops on float (N, C, H, W) in 0..1 ---------------------------------------------------------------
def _rand(x: torch.Tensor) -> torch.Tensor:
    return torch.rand(x.shape[0], device=x.device)


def _sample_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """(N, 1, 1, 1) bool: which samples an op with probability p applies to."""
    return (_rand(x) < p).view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB images (1-channel images are returned as they are)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images in HSV space.

    Args:
        x: (N, 3, H, W) float in 0..1.
        shift: (N,) hue shifts in turns (torchvision's ``hue_factor``, -0.5..0.5).
    Returns:
        (N, 3, H, W) with H' = (H + shift) mod 1, S and V unchanged.
    """
    r, g, b = x.unbind(1)
    value = x.amax(1)
    chroma = value - x.amin(1)
    inv = 1.0 / torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # hue in sixths of a turn (0..6); grays (chroma 0) get any hue, it does not matter
    hue6 = torch.where(value == r, (g - b) * inv,
                       torch.where(value == g, (b - r) * inv + 2.0, (r - g) * inv + 4.0))
    hue6 = hue6 + (6.0 * shift).view(-1, 1, 1)
    # HSV -> RGB: channel n (R=5, G=3, B=1) = V - V*S*clamp(min(k, 4-k), 0, 1), k = (n + 6H) mod 6,
    # and V*S is the chroma.
    n = torch.arange(5.0, 0.0, -2.0, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)  # no host->device copy
    k = torch.remainder(hue6.unsqueeze(1) + n, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(1) - chroma.unsqueeze(1) * ramp


class _ColorJitterOp(nn.Module):
    """Per-sample brightness/contrast/saturation/hue jitter in a per-sample random order."""

    def __init__(self, brightness: Any, contrast: Any, saturation: Any, hue: Any) -> None:
        super().__init__()
        self.ranges = [None if r is None else (float(r[0]), float(r[1])) for r in (brightness, contrast, saturation, hue)]

    def _factors(self, x: torch.Tensor, i: int, identity: float) -> torch.Tensor:
        rng = self.ranges[i]
        if rng is None:
            return torch.full((x.shape[0],), identity, device=x.device)
        return rng[0] + (rng[1] - rng[0]) * _rand(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        order = torch.rand(n, 4, device=x.device).argsort(dim=1)  # a uniform random permutation per sample
        factors = torch.stack([self._factors(x, 0, 1.0), self._factors(x, 1, 1.0), self._factors(x, 2, 1.0)], 1)
        hue = self._factors(x, 3, 0.0)
        use_gray = self.ranges[1] is not None or self.ranges[2] is not None
        use_hue = self.ranges[3] is not None and x.shape[1] == 3
        ones = torch.ones(n, 1, device=x.device)
        for step in range(4):
            op = order[:, step]  # 0 brightness, 1 contrast, 2 saturation, 3 hue
            # brightness/contrast/saturation are each blend(x, other, f) = f*x + (1-f)*other with
            # other = 0, the mean of the grayscale image, or the grayscale image
            f = torch.cat([factors, ones], 1).gather(1, op.view(-1, 1)).view(-1, 1, 1, 1)
            if use_gray:
                gray = _gray(x)
                is_contrast = (op == 1).to(x.dtype).view(-1, 1, 1, 1)
                is_saturation = (op == 2).to(x.dtype).view(-1, 1, 1, 1)
                other = gray * is_saturation + gray.mean(dim=(1, 2, 3), keepdim=True) * is_contrast
                blended = torch.addcmul(other * (1 - f), x, f).clamp_(0.0, 1.0)
            else:
                blended = (f * x).clamp_(0.0, 1.0)
            if use_hue:
                blended = torch.where((op == 3).view(-1, 1, 1, 1), shift_hue(x, hue), blended)
            x = blended
        return x


class _GrayscaleOp(nn.Module):
    def __init__(self, p: float, num_output_channels: Union[int, None]) -> None:
        super().__init__()
        self.p = p
        self.num_output_channels = num_output_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1 and self.num_output_channels in (None, 1):
            return x
        gray = _gray(x)
        if self.num_output_channels == 1:
            return gray
        gray = gray.expand(-1, self.num_output_channels or x.shape[1], -1, -1)
        return gray if self.p >= 1 else torch.where(_sample_mask(x, self.p), gray, x)


class _BlurOp(nn.Module):
    def __init__(self, sigma_min: float, sigma_max: float, p: float, kernel_size: int) -> None:
        super().__init__()
        self.sigma_min, self.sigma_max, self.p, self.kernel_size = sigma_min, sigma_max, p, kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * _rand(x)
        blurred = blur_batch(x, sigma, self.kernel_size)
        return blurred if self.p >= 1 else torch.where(_sample_mask(x, self.p), blurred, x)


class _SolarizeOp(nn.Module):
    def __init__(self, threshold: float, p: float) -> None:
        super().__init__()
        self.threshold, self.p = threshold, p  # threshold on the 0..1 scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hit = x >= self.threshold
        if self.p < 1:
            hit = hit & _sample_mask(x, self.p)
        return torch.where(hit, 1.0 - x, x)


class _LightingOp(nn.Module):
    def __init__(self, alphastd: float, eigval: torch.Tensor, eigvec: torch.Tensor) -> None:
        super().__init__()
        self.alphastd = alphastd
        self.register_buffer("eigval", eigval.clone(), persistent=False)
        self.register_buffer("eigvec", eigvec.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return x
        alpha = torch.randn(x.shape[0], 3, device=x.device) * self.alphastd
        noise = (alpha * self.eigval) @ self.eigvec.T  # (N, 3)
        return x + noise.to(x.dtype).view(-1, 3, 1, 1)


class _FlipOp(nn.Module):
    def __init__(self, dim: int, p: float) -> None:
        super().__init__()
        self.dim, self.p = dim, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flipped = x.flip(self.dim)
        return flipped if self.p >= 1 else torch.where(_sample_mask(x, self.p), flipped, x)


class _NormalizeOp(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float) -> None:
        super().__init__()
        self.scale = scale  # 255 when the CPU pipeline's values would be 0..255 floats here
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale != 1:
            x = x * self.scale
        return (x - self.mean) / self.std


class _ScaleOp(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


class _SequenceOp(nn.Module):
    """Inner ops of RandomApply: all applied to the samples drawn with probability p."""

    def __init__(self, ops: list[nn.Module], p: float) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for op in self.ops:
            y = op(y)
        return y if self.p >= 1 else torch.where(_sample_mask(x, self.p), y, x)


class DeviceAugment(nn.Module):
    """The device part of a split pipeline: batched ops applied in order.

    Args:
        ops: batched ops (built by :func:`split_pipeline`).
        source: the transforms they were made from (for ``repr`` and error messages).
    Call with (N, C, H, W) images (uint8 0..255, or float 0..1) on any device; returns float32
    (N, C', H, W) on the same device.
    """

    def __init__(self, ops: list[nn.Module], source: Sequence[Any] = ()) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        self.source = [type(t).__name__ for t in source]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4:
            raise ValueError(f"DeviceAugment: expected a (N, C, H, W) batch, got shape {tuple(img.shape)}")
        x = img.as_subclass(torch.Tensor)
        x = x.float() if x.is_floating_point() else x.float().div_(255)
        for buffer in self.buffers():
            if buffer.device != x.device:
                self.to(x.device)
            break
        for op in self.ops:
            x = op(x)
        return x.contiguous()

    def extra_repr(self) -> str:
        return f"source={self.source}"


# -- splitting a built pipeline ---------------------------------------------------------------------------
_CONVERSIONS = (v2.ToImage, v2.PILToTensor, v2.ToTensor, v2.ToDtype, v2.ConvertImageDtype, v2.ToPureTensor, v2.Identity,
                v1.ToTensor, v1.PILToTensor, v1.ConvertImageDtype)
_FLIPS = (v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v1.RandomHorizontalFlip, v1.RandomVerticalFlip)
_COLOUR = (v2.ColorJitter, v2.RandomGrayscale, v2.Grayscale, v2.RandomSolarize, v2.Normalize, GaussianBlur,
           Solarization, Lighting, v1.ColorJitter, v1.RandomGrayscale, v1.Grayscale, v1.Normalize, v1.RandomSolarize)
_APPLY = (RandomAppliedTrans, v2.RandomApply, v1.RandomApply)
_COMPOSE = (v2.Compose, v1.Compose)


def _is_colour(t: Any) -> bool:
    if isinstance(t, _COLOUR):
        return True
    if isinstance(t, _APPLY + _COMPOSE):
        return any(_is_colour(inner) for inner in t.transforms)
    return False


def _pixel_independent(t: Any) -> bool:
    """Transforms that only add outputs without reading pixels (mask generators) stay on the CPU."""
    from .masks import BlockwiseMaskGenerator, SimMIMMaskGenerator
    return isinstance(t, (BlockwiseMaskGenerator, SimMIMMaskGenerator))


def _float_dtype(dtype: Any) -> Union[bool, None]:
    """Whether a ToDtype target for images is floating point (None: leaves images alone)."""
    if isinstance(dtype, dict):
        from torchvision import tv_tensors
        dtype = dtype.get(tv_tensors.Image, dtype.get("others"))
    if dtype is None:
        return None
    return bool(dtype.is_floating_point)


class _State:
    """What the CPU pipeline's image would be at this point: 'uint8', 'float01', 'float255', 'normalized'."""

    def __init__(self) -> None:
        self.kind = "uint8"

    def convert(self, t: Any) -> None:
        if isinstance(t, (v2.ToTensor, v1.ToTensor)):
            self.kind = "float01"
        elif isinstance(t, (v2.ToDtype, v2.ConvertImageDtype, v1.ConvertImageDtype)):
            is_float = _float_dtype(t.dtype)
            scale = getattr(t, "scale", True)  # ConvertImageDtype always rescales
            if is_float is None or self.kind == "normalized":
                return
            if is_float:
                if self.kind == "uint8":
                    self.kind = "float01" if scale else "float255"
            elif self.kind != "uint8":
                self.kind = "uint8"


def _unsupported(t: Any, index: int, why: str) -> ValueError:
    return ValueError(
        f"split_pipeline: {type(t).__name__} (pipeline item {index}) {why}; "
        "move it before the colour transforms (it then runs on the CPU), or use augment_on='cpu'"
    )


def _device_ops(t: Any, index: int, state: _State, inside_apply: bool = False) -> list[nn.Module]:
    """Batched ops equivalent to transform ``t`` (updating ``state``); ValueError if there are none."""
    colour_ok = state.kind in ("uint8", "float01")
    if isinstance(t, _CONVERSIONS):
        state.convert(t)
        return []
    if isinstance(t, _FLIPS):
        return [_FlipOp(-1 if isinstance(t, (v2.RandomHorizontalFlip, v1.RandomHorizontalFlip)) else -2, float(t.p))]
    if isinstance(t, _COMPOSE):
        return [op for inner in t.transforms for op in _device_ops(inner, index, state, inside_apply)]
    if isinstance(t, _APPLY):
        ops = [op for inner in t.transforms for op in _device_ops(inner, index, state, True)]
        return [_SequenceOp(ops, float(t.p))] if ops else []
    if isinstance(t, (v2.Normalize, v1.Normalize)):
        if inside_apply:
            raise _unsupported(t, index, "inside a random apply has no device implementation")
        scale = {"float255": 255.0}.get(state.kind, 1.0)
        state.kind = "normalized"
        return [_NormalizeOp(t.mean, t.std, scale)]
    if isinstance(t, _COLOUR) and not colour_ok:
        what = "after Normalize" if state.kind == "normalized" else "on 0..255 float images (ToDtype without scale)"
        raise _unsupported(t, index, f"is a colour transform {what}, which the device path does not reproduce")
    if isinstance(t, (v2.ColorJitter, v1.ColorJitter)):
        return [_ColorJitterOp(t.brightness, t.contrast, t.saturation, t.hue)]
    if isinstance(t, (v2.RandomGrayscale, v1.RandomGrayscale)):
        return [_GrayscaleOp(float(t.p), None)]
    if isinstance(t, (v2.Grayscale, v1.Grayscale)):
        if inside_apply and t.num_output_channels == 1:
            raise _unsupported(t, index, "changes the channel count inside a random apply")
        return [_GrayscaleOp(1.0, int(t.num_output_channels))]
    if isinstance(t, GaussianBlur):
        return [_BlurOp(t.sigma_min, t.sigma_max, t.p, t.kernel_size)]
    if isinstance(t, Solarization):
        return [_SolarizeOp(t.threshold / 255.0, t.p)]
    if isinstance(t, (v2.RandomSolarize, v1.RandomSolarize)):
        threshold = float(t.threshold) / (255.0 if state.kind == "uint8" else 1.0)
        return [_SolarizeOp(threshold, float(t.p))]
    if isinstance(t, Lighting):
        return [_LightingOp(t.alphastd, t.eigval, t.eigvec)]
    raise _unsupported(t, index, "comes after the colour transforms and has no device implementation")


def split_pipeline(transforms: Sequence[Any]) -> tuple[list, DeviceAugment]:
    """Split a built pipeline into a CPU part and one batched device module.

    The CPU part is the leading run of transforms before the first colour/normalise transform
    (ColorJitter, Grayscale/RandomGrayscale, GaussianBlur, Solarization/RandomSolarize,
    Lighting, Normalize, or a RandomAppliedTrans/RandomApply/Compose containing one), minus
    the conversions (ToImage/ToTensor/ToDtype...) just before it, followed by
    :class:`ToUint8CHW`. Crops, resizes and flips before that point stay on the CPU; flips
    after it run on the device. Mask generators anywhere in the pipeline stay on the CPU
    (after ToUint8CHW); they do not read pixels.

    Args:
        transforms: built transform objects, in order.
    Returns:
        ``(cpu_transforms, device_module)``: a list ending with ToUint8CHW (run it with
        :func:`selfsup_data.transforms.apply_transforms`; gives uint8 (C, H, W)), and a
        :class:`DeviceAugment` (always a module; with no device ops it only converts to float).
    Raises:
        ValueError: a transform after the split point has no device implementation (the
        message names it and its position).
    """
    transforms = list(transforms)
    pixel_free = [t for t in transforms if _pixel_independent(t)]
    rest = [(i, t) for i, t in enumerate(transforms) if not _pixel_independent(t)]
    split = next((k for k, (_, t) in enumerate(rest) if _is_colour(t)), len(rest))
    while split > 0 and isinstance(rest[split - 1][1], _CONVERSIONS):
        split -= 1
    state = _State()
    for _, t in rest[:split]:
        if isinstance(t, _CONVERSIONS):
            state.convert(t)
    ops = [op for i, t in rest[split:] for op in _device_ops(t, i, state)]
    if state.kind == "float255":
        ops.append(_ScaleOp(255.0))
    cpu = [t for _, t in rest[:split]] + [ToUint8CHW()] + pixel_free
    return cpu, DeviceAugment(ops, [t for _, t in rest[split:]])


# -- the batch-dict callable the trainer uses -------------------------------------------------------------
def _to_float01(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.is_floating_point() else x.float().div_(255)


class BatchDeviceTransform(nn.Module):
    """Apply per-view device modules to a batch dict: ``batch = device_transform(batch)``.

    Args:
        per_view: one module per view (a group's module repeated for each of its views);
            ``None`` converts that view to float 0..1 only. A single entry is used for
            every view.
    Call with the collated batch dict: ``img`` is a (N, C, H, W) tensor or a list of them (one
    per view), uint8 or float, on the training device. Returns a new dict with the same keys
    and ``img`` float32 (normalised when the view's pipeline normalises).
    """

    def __init__(self, per_view: Sequence[Union[nn.Module, None]]) -> None:
        super().__init__()
        if len(per_view) == 0:
            raise ValueError("BatchDeviceTransform: per_view needs at least one entry (None for float conversion only)")
        self._has_module = [m is not None for m in per_view]
        self.per_view = nn.ModuleList([m if m is not None else nn.Identity() for m in per_view])

    def _transform_view(self, k: int, view: torch.Tensor) -> torch.Tensor:
        # not ``_apply``: that name is nn.Module's hook for ``.to()`` / ``.cuda()``
        index = 0 if len(self.per_view) == 1 else k
        if not self._has_module[index]:
            return _to_float01(view)
        return self.per_view[index](view)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        img = batch["img"]
        views = list(img) if isinstance(img, (list, tuple)) else [img]
        if len(self.per_view) != 1 and len(views) != len(self.per_view):
            raise ValueError(f"BatchDeviceTransform: the batch has {len(views)} views but {len(self.per_view)} "
                             "per-view modules were given")
        out = [self._transform_view(k, v) for k, v in enumerate(views)]
        return {**batch, "img": out if isinstance(img, (list, tuple)) else out[0]}
