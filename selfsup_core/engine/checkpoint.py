"""Atomic, resumable checkpoints.

A checkpoint is one ``torch.save`` file holding only tensors and plain containers, so it
loads with ``weights_only=True``::

    {"meta": {"epoch", "iter", "inner_iter", "world_size", "seed", "selfsup_version", "time"},
     "state_dict": model, "optimizer": ..., "lr_schedule": ..., "scaler": ...,
     "rng": [per-rank RNG states], "hooks": {hook name: state},
     "checksum": "sha256:<hex>"}

``checksum`` is the SHA-256 of every other entry (:mod:`selfsup_core.engine.checksum`):
:func:`atomic_save` adds it, :func:`load` verifies it, so bytes changed on disk after the
write are refused in one line even where ``torch.load`` happens to succeed. Checkpoints
without one (older, or from another framework) load as before.

Writes go to a temporary file in the same directory, are fsync'ed, then renamed over the
target, so a crash mid-write never leaves a half-written ``latest.pth``.
"""
from __future__ import annotations

import os
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SelfSupError
from ..fileio import atomic_write
from .checksum import CHECKSUM_KEY, ChecksumMismatch, add_checksum, verify_checksum

LATEST = "latest.pth"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.pth")


class CheckpointError(SelfSupError):
    """A checkpoint cannot be found, read or used."""


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` to ``path`` through a temporary file, fsync and rename.

    A training checkpoint (a dict with ``meta`` and ``state_dict`` entries) is saved with its
    ``checksum`` entry added; anything else (exported weights, a bare state dict) as it is."""
    if is_training_checkpoint(obj):
        obj = add_checksum(obj)
    atomic_write(path, lambda handle: torch.save(obj, handle))


def is_training_checkpoint(obj: Any) -> bool:
    """Whether ``obj`` is a training checkpoint dict (``meta`` and ``state_dict`` entries)."""
    return isinstance(obj, dict) and isinstance(obj.get("meta"), dict) and "state_dict" in obj


def load(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; any failure is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        refused = "Weights only load failed" in str(exc) and zipfile.is_zipfile(path)
        if refused:
            detail = next((line.strip() for line in str(exc).splitlines() if "Unsupported" in line or "GLOBAL" in line), "")
            raise CheckpointError(
                f"checkpoint {path} holds objects that are not plain tensors and containers, so it is not "
                f"loaded (weights_only=True){': ' + detail if detail else ''}"
            ) from exc
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({_short(exc)}); the file is truncated or corrupted: "
            "resume from another checkpoint (epoch_*.pth) or start a new work dir"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    check_integrity(state, path)
    state.pop(CHECKSUM_KEY, None)
    return state


def check_integrity(state: Any, path: str | os.PathLike[str]) -> bool:
    """Verify the ``checksum`` entry of a loaded checkpoint ``state`` read from ``path``.

    Returns True when it matched, False when the checkpoint has none (nothing to check);
    raises :class:`CheckpointError` (one line naming ``path``) when it does not match."""
    if not isinstance(state, dict):
        return False
    try:
        return verify_checksum(state)
    except ChecksumMismatch as exc:
        raise CheckpointError(
            f"checkpoint {path} is damaged: {exc}; use another checkpoint of the run (epoch_*.pth)"
        ) from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def find_latest(work_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``--resume auto`` picks: ``latest.pth``, else the highest ``epoch_N.pth``."""
    work_dir = Path(work_dir)
    latest = work_dir / LATEST
    if latest.is_file():
        return latest
    epochs = list_epoch_checkpoints(work_dir)
    return epochs[-1] if epochs else None


def list_epoch_checkpoints(work_dir: str | os.PathLike[str]) -> list[Path]:
    """``epoch_N.pth`` files of ``work_dir``, oldest first."""
    found = []
    for path in Path(work_dir).glob("epoch_*.pth"):
        match = _EPOCH_FILE.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def prune(work_dir: str | os.PathLike[str], keep: int) -> None:
    """Delete all but the ``keep`` newest ``epoch_N.pth`` files (``keep < 1``: keep all)."""
    if keep < 1:
        return
    for path in list_epoch_checkpoints(work_dir)[:-keep]:
        path.unlink(missing_ok=True)


# -- random number generator states ---------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain containers."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


__all__ = [
    "CheckpointError",
    "LATEST",
    "atomic_save",
    "check_integrity",
    "find_latest",
    "is_training_checkpoint",
    "list_epoch_checkpoints",
    "load",
    "prune",
    "rng_state",
    "set_rng_state",
]
