"""``selfsup-run CONFIG --check``: the checks that go beyond reading the config.

* :func:`preflight` (before anything is built, training runs too): every problem of the
  component tables, the trainer's tables (``[runner]``, ``[data]`` ...), the sections plugins
  declare (``[evaluation]``: :mod:`selfsup_core.sections`) and the hooks, reported together in
  one round; a config without ``[model]`` is one of them.
* :func:`check_data` (``--check`` only, after the model is built): builds the training
  dataset when every file it names is there (a ``Subset`` larger than its source is caught;
  samples are read one at a time, only for the dry forward) and, unless ``--no-dry-run``,
  runs the model on one batch of two samples, so that shapes that disagree (a neck's
  ``in_channels`` against the backbone's output, ``in_channels = 3`` on grey images, a
  3-value ``mean`` on 1-channel data) end in one line naming the likely key.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError, Problems, SelfSupError, describe_exception

DRY_RUN_SAMPLES = 2


def preflight(config: Config) -> None:
    """Raise one :class:`ConfigError` listing every problem found without building the model:
    component tables (:func:`selfsup_core.build.validate`), ``[model]`` present, the trainer's
    settings, the plugins' sections and the hooks' constructors. Called by the CLI before training
    or checking."""
    from ..build import build_hooks, validate
    from ..sections import check_sections
    from .settings import read_settings

    problems = Problems(config)
    if not isinstance(config.data.get("model"), Mapping):
        problems.add(("model",), "missing [model] table (the algorithm to train), e.g. [model] "
                                 "type = \"SimCLR\"" if "model" not in config.data else
                     "must be a table with a 'type' naming an algorithm")
    data = config.data.get("data")
    train = data.get("train") if isinstance(data, Mapping) else None
    if isinstance(train, Mapping) and "type" not in train:
        problems.add(("data", "train"), "missing the dataset's type, e.g. type = \"MultiViewDataset\"")
    steps = [lambda: validate(config), lambda: check_sections(config)]
    if "runner" in config.data or "data" in config.data:
        steps += [lambda: read_settings(config), lambda: build_hooks(config)]
    for step in steps:
        try:
            step()
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.raise_if_any()


#: torch error texts -> the config key that most likely caused them
_SHAPE_HINTS = (
    (re.compile(r"expected input.* to have (\d+) channels, but got (\d+) channels"), ("model", "backbone", "in_channels"),
     "the backbone's input channels do not match the images"),
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied|size mismatch|shapes cannot be multiplied"),
     ("model", "neck", "in_channels"), "the neck's in_channels do not match the backbone's output"),
    (re.compile(r"mean|std|normaliz", re.I), ("data", "train", "pipeline"),
     "Normalize's mean/std have another number of values than the images have channels"),
)


#: errors of a forward pass that say the shapes disagree (others may be state the run's hooks set up)
_SHAPE_ERROR = re.compile(r"shape|size|channels|dimension|mat1|mat2|expected input|must match|broadcast", re.I)


def check_data(config: Config, model: Any, *, dry_run: bool = True) -> str | None:
    """Build ``[data.train]`` and (``dry_run``) forward one batch of it through ``model``.
    Returns a one-line note of what was checked, or None when the data's files are not all
    there (nothing is built then; the caller prints which paths the run will read). Raises
    one-line :class:`ConfigError` for a dataset that cannot be built or a failed forward."""
    from ..build import Builder
    from ..data_paths import data_paths

    train = config.data.get("data", {}).get("train") if isinstance(config.data.get("data"), Mapping) else None
    if not (isinstance(train, Mapping) and "type" in train):
        return None
    if any(not Path(value).exists() for _, value in data_paths(train, ("data", "train"))):
        return None
    try:
        dataset = Builder(config).build(dict(train), "datasets", ("data", "train"))
    except ConfigError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) or "not found" in str(cause or ""):
            return None  # the data is not on this machine: the caller notes which paths the run reads
        raise
    note = f"data.train: {len(dataset):,} samples"
    if not dry_run or not hasattr(model, "forward"):
        return note
    import torch

    from .data import build_loader, device_transform_of
    from .trainer import _accepted_keywords

    count = min(DRY_RUN_SAMPLES, len(dataset))
    if count == 0:
        raise ConfigError(config.problem(("data", "train"), "the training set is empty"))
    try:
        loader, _ = build_loader(dataset, batch_size=count, num_workers=0, seed=0, rank=0, world_size=1,
                                 drop_last=False, pin_memory=False, persistent_workers=False, prefetch_factor=None)
        batch = next(iter(loader))
    except SelfSupError:
        raise
    except Exception as exc:  # noqa: BLE001 - a transform that fails on a real sample
        raise ConfigError(config.problem(("data", "train", "pipeline"), f"reading one batch of {count} samples "
                                         f"failed: {_first_line(exc)}")) from exc
    try:
        transform = device_transform_of(dataset, torch.device("cpu"))
        before = _channels(batch)
        if transform is not None:
            batch = transform(batch)
        if before is not None and _channels(batch) != before:  # e.g. a 3-value mean on grey images
            raise ConfigError(config.problem(
                ("data", "train", "pipeline"), f"the batched transforms turn {before}-channel images into "
                f"{_channels(batch)}-channel ones; likely: Normalize's mean/std have another number of values than "
                "the images have channels (skip this check with --no-dry-run)"))
        keys = _accepted_keywords(model.forward)
        kwargs = ({"img": batch} if not isinstance(batch, Mapping) else
                  {k: v for k, v in batch.items() if keys is None or k in keys})
        model.train()
        with torch.no_grad():
            model(mode="train", **kwargs)
    except SelfSupError:
        raise
    except Exception as exc:  # noqa: BLE001 - a shape error becomes one line naming the likely key
        text = _first_line(exc)
        if not _SHAPE_ERROR.search(text):  # e.g. state a hook sets up when the run starts (cluster labels)
            return note + f"; the dry forward needs the run's start: {text[:120]}"
        path, why = ("model",), "the model and the data do not fit together"
        for pattern, hint_path, hint in _SHAPE_HINTS:
            if pattern.search(text):
                path, why = hint_path, hint
                break
        raise ConfigError(config.problem(path, f"a dry forward of one batch ({count} samples of data.train) failed: "
                                               f"{text}; likely: {why} (skip this check with --no-dry-run)")) from exc
    return note + f", one batch of {count} ran through the model"


def _channels(batch: Any) -> int | None:
    """The channel count of the first 4-d tensor in a (nested) batch, or None."""
    import torch

    if isinstance(batch, torch.Tensor):
        return int(batch.shape[1]) if batch.dim() == 4 else None
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (list, tuple)) else ()
    for value in values:
        found = _channels(value)
        if found is not None:
            return found
    return None


def _first_line(exc: BaseException) -> str:
    lines = describe_exception(exc).splitlines()
    return lines[0][:300] if lines else type(exc).__name__
