"""``OneViewDataset`` (alias ``SingleViewDataset``) and ``MultiViewDataset``."""
from __future__ import annotations

from typing import Any

import torch

from .base import BaseDataset, DataSourceLike, device_api


class OneViewDataset(BaseDataset):
    """One augmented view per sample (MMSelfSup's ``SingleViewDataset``).

    Args:
        data_source: a data source (``data_source = {type = "ImageFolder", ...}``).
        pipeline: transforms applied in order to the source's PIL image; the last must
            produce a tensor.
        on_bad_sample: ``"error"`` or ``"skip"`` (see :class:`BaseDataset`).
        augment_on: ``"cpu"`` or ``"device"``; with ``"device"`` the pipeline is split: the
            workers run the decode/crop part (uint8 tensor), :attr:`device_transform` (a
            ``BatchDeviceTransform`` of one view) the rest on the batch.

    Returns per sample ``{"img": Tensor (C, H, W), "label": int, "idx": int}``
    (``label`` -1 when the source has none), plus the extra outputs of transforms that return
    them (e.g. ``"mask"`` from a mask generator).
    """

    def __init__(
        self,
        data_source: DataSourceLike,
        pipeline: list,
        on_bad_sample: str = "error",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__(data_source, on_bad_sample, augment_on)
        self.pipeline, device_part = self.make_pipeline("pipeline", pipeline)
        if augment_on == "device":
            _, batch_device_transform = device_api(type(self).__name__)
            self.device_transform = batch_device_transform([device_part])

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img, idx = self.load(idx)
        out, extras = self.pipeline.run(img)
        return {"img": self.finish(out), "label": self.label_of(idx), "idx": idx, **extras}


class MultiViewDataset(BaseDataset):
    """Several augmented views per sample, in groups (MMSelfSup 0.x's ``MultiViewDataset``).

    Args:
        data_source: a data source.
        num_views: views per group, e.g. ``[2]`` (two views of one pipeline: SimCLR, BYOL) or
            ``[2, 6]`` (multi-crop: 2 views of the first pipeline, 6 of the second).
        pipelines: one pipeline (list of transforms) per group; each must end producing a
            tensor.
        on_bad_sample: ``"error"`` or ``"skip"``.
        augment_on: ``"cpu"`` or ``"device"``; with ``"device"``, :attr:`device_transform` is a
            ``BatchDeviceTransform`` with one entry per view (each group's device module repeated
            ``num_views[g]`` times).

    Returns per sample ``{"img": [Tensor (C, H_g, W_g)] * sum(num_views), "label", "idx"}``,
    views in group order (group 0's views first); an extra output of the pipelines (e.g.
    ``"mask"``) becomes a list with one entry per view.
    """

    def __init__(
        self,
        data_source: DataSourceLike,
        num_views: list[int],
        pipelines: list[list],
        on_bad_sample: str = "error",
        augment_on: str = "cpu",
    ) -> None:
        super().__init__(data_source, on_bad_sample, augment_on)
        owner = type(self).__name__
        if not isinstance(num_views, (list, tuple)) or not num_views:
            raise ValueError(f"{owner}: num_views must be a non-empty list of view counts, e.g. [2]")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in num_views):
            raise ValueError(f"{owner}: num_views must hold positive integers, got {list(num_views)}")
        if not isinstance(pipelines, (list, tuple)) or len(pipelines) != len(num_views):
            got = len(pipelines) if isinstance(pipelines, (list, tuple)) else type(pipelines).__name__
            raise ValueError(
                f"{owner}: len(num_views) must equal len(pipelines) (one pipeline per group of views); "
                f"num_views = {list(num_views)} has {len(num_views)} groups, pipelines has {got}"
            )
        self.num_views = [int(n) for n in num_views]
        self.pipelines = []
        device_parts = []
        for g, pipeline in enumerate(pipelines):
            composed, device_part = self.make_pipeline(f"pipelines[{g}]", pipeline)
            self.pipelines.append(composed)
            device_parts += [device_part] * self.num_views[g]
        if augment_on == "device":
            _, batch_device_transform = device_api(owner)
            self.device_transform = batch_device_transform(device_parts)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img, idx = self.load(idx)
        views: list[torch.Tensor] = []
        extras: list[dict[str, Any]] = []
        for g, (count, pipeline) in enumerate(zip(self.num_views, self.pipelines)):
            for _ in range(count):
                out, extra = pipeline.run(img)
                views.append(self.finish(out, f"pipelines[{g}]"))
                extras.append(extra)
        sample: dict[str, Any] = {"img": views, "label": self.label_of(idx), "idx": idx}
        for key in sorted({k for extra in extras for k in extra}):
            if not all(key in extra for extra in extras):
                raise ValueError(
                    f"{type(self).__name__}: some views' pipelines produce {key!r} and others do not; "
                    "give every group the same extra outputs (e.g. the same mask generator)"
                )
            sample[key] = [extra[key] for extra in extras]
        return sample
