"""Every method's view pipeline as a ready transform, for a plain PyTorch loop.

``SimCLRTransform()(image)`` returns the two augmented views that the shipped SimCLR config's
``MultiViewDataset`` makes from ``image`` (a PIL image or a ``uint8``/float ``(C, H, W)``
tensor). Each preset writes its pipeline as the same ``{type = ...}`` tables a config uses
(:attr:`MultiViewTransform.pipelines`) and builds them through the transform registry, so a
preset and a config with the same tables apply the same components with the same arguments.
Random parameters come from torch's global RNG (seed it with ``torch.manual_seed``).

Defaults are the ImageNet recipes of ``examples/configs/*_in1k.toml`` (224 px, ImageNet mean
and std). For small or grey-scale images pass ``input_size``, ``mean``/``std`` (one value per
channel) and ``grayscale=True`` (drops saturation/hue jitter and random grey-scale, as the
Fashion-MNIST configs do).

Presets: :class:`SimCLRTransform`, :class:`MoCoV1Transform`, :class:`MoCoV2Transform`,
:class:`MoCoV3Transform`, :class:`DenseCLTransform`, :class:`NPIDTransform`, :class:`BYOLTransform`,
:class:`SimSiamTransform`, :class:`BarlowTwinsTransform`, :class:`SwAVTransform` (multi-crop),
:class:`DeepClusterTransform`, :class:`ODCTransform`, :class:`MAETransform` and
:class:`SimMIMTransform`; :func:`from_config` for any config's pipelines (RelativeLoc and
RotationPred included); :class:`MultiViewTransform` for your own tables.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

Table = dict[str, Any]


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[Table]:
    """To a float tensor in 0..1, then normalised (every pipeline's last three steps)."""
    return [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True},
            {"type": "Normalize", "mean": [float(m) for m in mean], "std": [float(s) for s in std]}]


def _jitter(brightness: float, contrast: float, saturation: float, hue: float, p: float,
            grayscale: bool) -> list[Table]:
    jitter: Table = {"type": "ColorJitter", "brightness": brightness, "contrast": contrast}
    if not grayscale:
        jitter.update(saturation=saturation, hue=hue)
    steps: list[Table] = [{"type": "RandomAppliedTrans", "transforms": [jitter], "p": p}]
    if not grayscale:
        steps.append({"type": "RandomGrayscale", "p": 0.2})
    return steps


def _crop(size: int, scale: Sequence[float] | None, antialias: bool = True, **extra: Any) -> Table:
    table: Table = {"type": "RandomResizedCrop", "size": int(size)}
    if scale is not None:
        table["scale"] = [float(s) for s in scale]
    table.update(extra)
    if antialias:  # torchvision's default too; written where the shipped configs write it
        table["antialias"] = True
    return table


class MultiViewTransform:
    """Views from pipelines of transform tables: ``num_views[i]`` views from ``pipelines[i]``.

    Args:
        pipelines: one list of ``{"type": ..., ...}`` transform tables per group, as in a
            config's ``[data.train] pipelines``.
        num_views: views per group (default one each).

    ``__call__(image)`` returns a list of tensors (group by group), or the single tensor when
    there is exactly one view in total.
    """

    def __init__(self, pipelines: Sequence[Sequence[Mapping[str, Any]]], num_views: Sequence[int] | None = None) -> None:
        from selfsup_core.api import build

        from .datasets.base import Compose

        self.pipelines = [[dict(t) for t in pipeline] for pipeline in pipelines]
        self.num_views = [int(n) for n in (num_views if num_views is not None else [1] * len(self.pipelines))]
        if len(self.num_views) != len(self.pipelines):
            raise ValueError(f"{type(self).__name__}: {len(self.num_views)} num_views for {len(self.pipelines)} pipelines")
        self.transforms = [Compose([build(t, "transforms", path=f"pipelines.{g}.{i}") for i, t in enumerate(pipeline)])
                           for g, pipeline in enumerate(self.pipelines)]

    def __call__(self, image: Any) -> Any:
        views = [transform(image) for transform, n in zip(self.transforms, self.num_views) for _ in range(n)]
        return views[0] if len(views) == 1 else views

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_views={self.num_views}, transforms={self.transforms!r})"


class SimCLRTransform(MultiViewTransform):
    """SimCLR (Chen et al. 2020): two views of random resized crop (scale 0.08-1), flip,
    colour jitter 0.8/0.8/0.8/0.2 with p 0.8, grey-scale p 0.2, Gaussian blur p 0.5."""

    def __init__(self, input_size: int = 224, min_scale: float = 0.08, jitter_strength: float = 1.0,
                 blur_p: float = 0.5, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 grayscale: bool = False) -> None:
        s = jitter_strength
        crop = _crop(input_size, None if min_scale == 0.08 else (min_scale, 1.0))
        pipeline = [crop, {"type": "RandomHorizontalFlip"},
                    *_jitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, 0.8, grayscale),
                    {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": blur_p}, *_tail(mean, std)]
        super().__init__([pipeline], [2])


class MoCoV2Transform(MultiViewTransform):
    """MoCo v2: two views of random resized crop (scale 0.2-1), colour jitter 0.4/0.4/0.4/0.1
    with p 0.8, grey-scale p 0.2, Gaussian blur p 0.5, flip."""

    def __init__(self, input_size: int = 224, min_scale: float = 0.2, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        pipeline = [_crop(input_size, (min_scale, 1.0)), *_jitter(0.4, 0.4, 0.4, 0.1, 0.8, grayscale),
                    {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5},
                    {"type": "RandomHorizontalFlip"}, *_tail(mean, std)]
        super().__init__([pipeline], [2])


class MoCoV1Transform(MultiViewTransform):
    """MoCo v1 / InstDisc: two views of random resized crop (scale 0.2-1), grey-scale p 0.2,
    colour jitter 0.4/0.4/0.4/0.4 (always), flip."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        jitter: Table = {"type": "ColorJitter", "brightness": 0.4, "contrast": 0.4}
        steps: list[Table] = [_crop(input_size, (0.2, 1.0))]
        if not grayscale:
            jitter.update(saturation=0.4, hue=0.4)
            steps.append({"type": "RandomGrayscale", "p": 0.2})
        pipeline = [*steps, jitter, {"type": "RandomHorizontalFlip"}, *_tail(mean, std)]
        super().__init__([pipeline], [2])


class BYOLTransform(MultiViewTransform):
    """BYOL: two asymmetric views (bicubic crop scale 0.08-1, flip, jitter 0.4/0.4/0.2/0.1 p 0.8,
    grey-scale p 0.2; blur p 1.0 / 0.1; solarisation p 0.0 / 0.2)."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False,
                 blur_p: Sequence[float] = (1.0, 0.1), solarize_p: Sequence[float] = (0.0, 0.2)) -> None:
        pipelines = []
        for blur, solarize in zip(blur_p, solarize_p):
            pipelines.append([_crop(input_size, (0.08, 1.0), antialias=False, interpolation=3),
                              {"type": "RandomHorizontalFlip"}, *_jitter(0.4, 0.4, 0.2, 0.1, 0.8, grayscale),
                              {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": blur},
                              {"type": "Solarization", "p": solarize}, *_tail(mean, std)])
        super().__init__(pipelines, [1] * len(pipelines))


class BarlowTwinsTransform(BYOLTransform):
    """Barlow Twins: BYOL's asymmetric views (its paper uses the same augmentations)."""


class SwAVTransform(MultiViewTransform):
    """SwAV multi-crop: ``num_crops[0]`` global crops of ``crop_sizes[0]`` px (scale
    ``min_scales[0]``-``max_scales[0]``) and ``num_crops[1]`` local crops; each with jitter
    0.8/0.8/0.8/0.2 p 0.8, grey-scale p 0.2, blur p 0.5, flip."""

    def __init__(self, crop_sizes: Sequence[int] = (224, 96), num_crops: Sequence[int] = (2, 6),
                 min_scales: Sequence[float] = (0.14, 0.05), max_scales: Sequence[float] = (1.0, 0.14),
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 grayscale: bool = False) -> None:
        pipelines = [[_crop(size, (low, high)), *_jitter(0.8, 0.8, 0.8, 0.2, 0.8, grayscale),
                      {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5},
                      {"type": "RandomHorizontalFlip"}, *_tail(mean, std)]
                     for size, low, high in zip(crop_sizes, min_scales, max_scales)]
        super().__init__(pipelines, list(num_crops))


class MAETransform(MultiViewTransform):
    """MAE: one view, bicubic random resized crop (scale 0.2-1) and flip."""

    def __init__(self, input_size: int = 224, min_scale: float = 0.2, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        pipeline = [_crop(input_size, (min_scale, 1.0), interpolation=3), {"type": "RandomHorizontalFlip"},
                    *_tail(mean, std)]
        super().__init__([pipeline], [1])


class SimMIMTransform(MultiViewTransform):
    """SimMIM: one view (random resized crop scale 0.67-1, ratio 3/4-4/3, flip) and its mask
    (``SimMIMMaskGenerator``): ``__call__`` returns ``(image, mask)``."""

    def __init__(self, input_size: int = 192, min_scale: float = 0.67, mask_patch_size: int = 32,
                 model_patch_size: int = 4, mask_ratio: float = 0.6, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        pipeline = [_crop(input_size, (min_scale, 1.0), ratio=[0.75, 1.3333333]),
                    {"type": "RandomHorizontalFlip"}, *_tail(mean, std),
                    {"type": "SimMIMMaskGenerator", "input_size": int(input_size), "mask_patch_size": mask_patch_size,
                     "model_patch_size": model_patch_size, "mask_ratio": mask_ratio}]
        super().__init__([pipeline], [1])

    def __call__(self, image: Any) -> Any:
        img, extras = self.transforms[0].run(image)
        return img, extras["mask"]


class SimSiamTransform(MultiViewTransform):
    """SimSiam: two views of random resized crop (scale 0.2-1), jitter 0.4/0.4/0.4/0.1 p 0.8,
    grey-scale p 0.2, blur p 0.5, flip."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        pipeline = [_crop(input_size, (0.2, 1.0), antialias=False), *_jitter(0.4, 0.4, 0.4, 0.1, 0.8, grayscale),
                    {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5},
                    {"type": "RandomHorizontalFlip"}, *_tail(mean, std)]
        super().__init__([pipeline], [2])


class MoCoV3Transform(MultiViewTransform):
    """MoCo v3: two asymmetric views (crop scale 0.08-1, jitter 0.4/0.4/0.2/0.1 p 0.8, grey-scale
    p 0.2, blur p 1.0 / 0.1, solarisation only in the second view p 0.2, flip)."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        def view(blur: float, solarize: float | None) -> list[Table]:
            steps = [_crop(input_size, (0.08, 1.0)), *_jitter(0.4, 0.4, 0.2, 0.1, 0.8, grayscale),
                     {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": blur}]
            if solarize is not None:
                steps.append({"type": "Solarization", "p": solarize})
            return [*steps, {"type": "RandomHorizontalFlip"}, *_tail(mean, std)]

        super().__init__([view(1.0, None), view(0.1, 0.2)], [1, 1])


class DenseCLTransform(MoCoV2Transform):
    """DenseCL: MoCo v2's two views."""


class NPIDTransform(MultiViewTransform):
    """NPID (InstDisc): one view of MoCo v1's augmentation (crop scale 0.2-1, grey-scale p 0.2,
    jitter 0.4/0.4/0.4/0.4, flip)."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        super().__init__(MoCoV1Transform(input_size, mean, std, grayscale).pipelines, [1])


class DeepClusterTransform(MultiViewTransform):
    """DeepCluster / ODC: one view (crop scale 0.08-1, flip, rotation +-2 degrees, jitter
    0.4/0.4/1.0/0.5, grey-scale p 0.2)."""

    def __init__(self, input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, grayscale: bool = False) -> None:
        jitter: Table = {"type": "ColorJitter", "brightness": 0.4, "contrast": 0.4}
        tail: list[Table] = []
        if not grayscale:
            jitter.update(saturation=1.0, hue=0.5)
            tail.append({"type": "RandomGrayscale", "p": 0.2})
        pipeline = [_crop(input_size, None), {"type": "RandomHorizontalFlip"}, {"type": "RandomRotation", "degrees": 2},
                    jitter, *tail, *_tail(mean, std)]
        super().__init__([pipeline], [1])


class ODCTransform(DeepClusterTransform):
    """ODC: DeepCluster's view."""


def from_config(config: Any, section: str = "data.train") -> MultiViewTransform:
    """The view pipeline(s) of a config's dataset table: ``config`` is a path, a scoped packaged
    name (``"selfsup-pretext::rotation-pred_resnet18_1xb128-steplr-70e_fashion-mnist.toml"``) or
    a loaded :class:`~selfsup_core.config.Config`; ``section`` the dotted key of the dataset
    table. For RelativeLoc and RotationPred this is the per-image pipeline; their datasets cut
    patches / rotate after it."""
    from selfsup_core.api import Config, load_config

    if not isinstance(config, Config):
        if isinstance(config, str) and "::" in config:
            from selfsup_core.api import resolve_packaged_config as resolve

            config = resolve(config)
        config = load_config(config)
    table = config.get(section)
    pipelines = table.get("pipelines") or [table.get("pipeline") or []]
    return MultiViewTransform(pipelines, table.get("num_views"))


__all__ = ["BYOLTransform", "BarlowTwinsTransform", "DeepClusterTransform", "DenseCLTransform", "IMAGENET_MEAN",
           "IMAGENET_STD", "MAETransform", "MoCoV1Transform", "MoCoV2Transform", "MoCoV3Transform", "MultiViewTransform",
           "NPIDTransform", "ODCTransform", "SimCLRTransform", "SimMIMTransform", "SimSiamTransform", "SwAVTransform",
           "from_config"]
