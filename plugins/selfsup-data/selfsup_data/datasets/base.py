"""What every dataset shares: composing pipelines, reading samples with the bad-sample policy,
the CPU/device augmentation switch, and counters shared with DataLoader workers."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..sources.base import BadSampleError

ON_BAD_SAMPLE = ("error", "skip")
AUGMENT_ON = ("cpu", "device")
MAX_CONSECUTIVE_SKIPS = 100
_SLOTS = 64  # one skip-counter slot per process (main + DataLoader workers), so no two processes race


class DataSourceLike(Protocol):
    """What a dataset needs from a data source."""

    def __len__(self) -> int: ...

    def get_img(self, idx: int) -> Image.Image: ...

    def get_gt_labels(self) -> np.ndarray: ...


class Compose:
    """Apply transforms in order: ``Compose([t1, t2])(x) == t2(t1(x))``. Picklable.

    A transform may return a dict ``{"img": image, <extra keys>: ...}`` (the mask generators
    of :mod:`selfsup_data.masks`): the next transform gets the image, the extra keys are
    collected (later ones win) and returned by :meth:`run`.
    """

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def run(self, x: Any) -> tuple[Any, dict[str, Any]]:
        """``(final image, extra outputs)``."""
        extras: dict[str, Any] = {}
        for transform in self.transforms:
            x = transform(x)
            if isinstance(x, dict):
                if "img" not in x:
                    raise ValueError(f"{type(transform).__name__} returned a dict without an 'img' key")
                extras.update((k, v) for k, v in x.items() if k != "img")
                x = x["img"]
        return x, extras

    def __call__(self, x: Any) -> Any:
        """The final image; raises if a transform produced extra outputs (use :meth:`run`)."""
        x, extras = self.run(x)
        if extras:
            raise ValueError(f"pipeline produced extra outputs {sorted(extras)} that this dataset cannot return")
        return x

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])" if inner else "Compose([])"


def transform_list(owner: str, argument: str, pipeline: Any) -> list[Callable[[Any], Any]]:
    """A pipeline argument as a list of callables.

    Accepts a list of transforms (what the core builds from ``pipeline = [{type=...}, ...]``),
    a single callable (e.g. a ``torchvision.transforms.Compose``) or ``None`` (empty).
    """
    if pipeline is None:
        return []
    if callable(pipeline) and not isinstance(pipeline, (list, tuple)):
        return [pipeline]
    if not isinstance(pipeline, (list, tuple)):
        raise ValueError(f"{owner}: {argument} must be a list of transforms, got {type(pipeline).__name__}")
    for i, transform in enumerate(pipeline):
        if not callable(transform):
            raise ValueError(
                f"{owner}: {argument}[{i}] is not a transform (a {type(transform).__name__}); "
                "pipelines are lists of {type = ...} tables"
            )
    return list(pipeline)


def shared_zeros(n: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A tensor in shared memory: DataLoader workers (fork or spawn) see and write the same
    memory; a plain ``pickle`` copies it."""
    return torch.zeros(n, dtype=dtype).share_memory_()


def _process_slot() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_SLOTS - 1)


class BaseDataset(Dataset):
    """Base of the selfsup datasets.

    Args:
        data_source: a built data source (``len``, ``get_img``, ``get_gt_labels``).
        on_bad_sample: ``"error"`` (default): an unreadable image stops with an error naming its
            file; ``"skip"``: use the next readable index instead, warn once and count the skip
            in :attr:`num_skipped` (counted across DataLoader workers).
        augment_on: ``"cpu"`` (default: the whole pipeline runs in the DataLoader workers) or
            ``"device"`` (workers decode and crop to uint8 tensors, the rest runs batched on the
            device through :attr:`device_transform`).
    """

    def __init__(self, data_source: DataSourceLike, on_bad_sample: str = "error", augment_on: str = "cpu") -> None:
        owner = type(self).__name__
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"{owner}: on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        if augment_on not in AUGMENT_ON:
            raise ValueError(f"{owner}: augment_on must be 'cpu' or 'device', got {augment_on!r}")
        for method in ("get_img", "get_gt_labels", "__len__"):
            if not hasattr(data_source, method):
                raise ValueError(f"{owner}: data_source has no {method}(); give a data source "
                                 "(data_source = {type = \"ImageFolder\", ...})")
        self.data_source = data_source
        self.on_bad_sample = on_bad_sample
        self.augment_on = augment_on
        labels = np.asarray(data_source.get_gt_labels(), dtype=np.int64)
        if labels.shape != (len(data_source),):
            raise ValueError(f"{owner}: data_source labels have shape {labels.shape}, expected ({len(data_source)},)")
        self.gt_labels = labels
        self.device_transform: Any = None
        self._skips = shared_zeros(_SLOTS)
        self._warned = shared_zeros(1, torch.uint8)  # warn once across workers and epochs

    def __len__(self) -> int:
        return len(self.data_source)

    @property
    def CLASSES(self) -> tuple[str, ...] | None:  # noqa: N802 - MMSelfSup's name
        """The data source's class names."""
        return getattr(self.data_source, "CLASSES", None)

    @property
    def num_skipped(self) -> int:
        """How many unreadable samples were skipped so far, in this process and its workers."""
        return int(self._skips.sum())

    # -- reading ----------------------------------------------------------------------------------
    def load(self, idx: int) -> tuple[Image.Image, int]:
        """The source image of sample ``idx`` and the index it really came from (the next
        readable one when ``idx`` is unreadable and ``on_bad_sample == "skip"``)."""
        n = len(self.data_source)
        idx = int(idx)
        if not -n <= idx < n:
            raise IndexError(f"{type(self).__name__}: index {idx} out of range for {n} samples")
        idx %= n
        try:
            return self.data_source.get_img(idx), idx
        except BadSampleError as exc:
            if self.on_bad_sample == "error":
                raise BadSampleError(
                    exc.path, f"{exc.reason} (set on_bad_sample = \"skip\" on the dataset to skip unreadable files)"
                ) from exc
            first = exc
        self._count_skip(first)
        for step in range(1, min(n, MAX_CONSECUTIVE_SKIPS + 1)):
            candidate = (idx + step) % n
            try:
                return self.data_source.get_img(candidate), candidate
            except BadSampleError as exc:
                self._count_skip(exc)
        raise BadSampleError(first.path, f"{first.reason}; and the {min(n, MAX_CONSECUTIVE_SKIPS + 1) - 1} samples "
                             "after it are unreadable too, so skipping gave up")

    def _count_skip(self, exc: BadSampleError) -> None:
        self._skips[_process_slot()] += 1
        if not int(self._warned[0]):
            self._warned[0] = 1
            warnings.warn(
                f"{type(self).__name__}: skipped an unreadable sample: {exc} (on_bad_sample = \"skip\"; "
                "later skips are counted in num_skipped without a warning)",
                RuntimeWarning,
                stacklevel=3,
            )

    def label_of(self, idx: int) -> int:
        """Ground-truth label of sample ``idx`` (-1 when unlabelled)."""
        return int(self.gt_labels[idx])

    # -- pipelines ---------------------------------------------------------------------------------
    def make_pipeline(self, argument: str, pipeline: Any) -> tuple[Compose, Any]:
        """Compose a pipeline; with ``augment_on == "device"`` split it first.

        Returns ``(CPU part, device module or None)``.
        """
        transforms = transform_list(type(self).__name__, argument, pipeline)
        if self.augment_on == "cpu":
            return Compose(transforms), None
        split_pipeline, _ = device_api(type(self).__name__)
        cpu_part, device_part = split_pipeline(transforms)
        return Compose(cpu_part), device_part

    def finish(self, out: Any, argument: str = "pipeline") -> torch.Tensor:
        """Check that a pipeline produced a tensor; returns it."""
        if not isinstance(out, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__}: {argument} must end producing a tensor, got {type(out).__module__}."
                f"{type(out).__name__}; end it with ToTensor (or ToImage and ToDtype)"
            )
        return out

    def refuse_device(self) -> None:
        """For datasets whose samples the batched device transform cannot take."""
        if self.augment_on == "device":
            raise ValueError(f"{type(self).__name__}: augment_on = \"device\" is not supported here; use \"cpu\"")


def device_api(owner: str) -> tuple[Any, Any]:
    """``(split_pipeline, BatchDeviceTransform)`` from :mod:`selfsup_data.device_augment`."""
    try:
        from selfsup_data.device_augment import BatchDeviceTransform, split_pipeline
    except ImportError as exc:
        raise ValueError(
            f"{owner}: augment_on = \"device\" needs selfsup_data.device_augment, which cannot be imported "
            f"({exc}); use augment_on = \"cpu\""
        ) from exc
    return split_pipeline, BatchDeviceTransform
