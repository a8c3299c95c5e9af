"""Reading weights files and writing ``.safetensors``: what the core and plugins need to load
a checkpoint's tensors (``init_cfg`` Pretrained, ``load_from``, evaluation), nothing about any
backbone's key layout (conversions to torchvision / timm names live with the backbones, behind
the ``selfsup_convert_backbone`` hook).

``read_state_dict`` takes ``.safetensors`` files, raw state dicts and training checkpoints
(``torch.load(..., weights_only=True)``: nothing is unpickled). ``.safetensors`` go through
the ``safetensors`` package; this module adds atomic writes, tensors that share memory
written as independent copies, and every failure as one line naming the file. Public through
:mod:`selfsup_core.api` (``WeightsError``, ``read_state_dict``, ``select_prefix``,
``load_safetensors``, ``save_safetensors``, ``read_safetensors_metadata``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SelfSupError
from ..fileio import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch

StateDict = dict[str, "torch.Tensor"]


class WeightsError(SelfSupError, ValueError):
    """A weights file cannot be read, understood or written."""


class SafetensorsError(WeightsError):
    """A ``.safetensors`` file cannot be read or written."""


# -- any weights file -------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike[str], map_location: Any = "cpu") -> tuple[StateDict, dict[str, Any]]:
    """The tensor state dict in ``path`` and the checkpoint's ``meta`` (for a ``.safetensors``
    file: its header metadata; empty if none).

    Accepts ``.safetensors``, raw state dicts and training checkpoints (``state_dict``,
    ``model``, ``module`` ... entries); a DDP ``module.`` prefix on every key is removed. A
    selfsup checkpoint whose stored checksum does not match is refused. Raises
    :class:`WeightsError` (one line naming the file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return load_safetensors(path), read_safetensors_metadata(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "Weights only load failed" in str(exc):
            raise WeightsError(
                f"{path}: holds objects that are not plain tensors and containers, so it is not loaded "
                "(weights_only=True); re-save just its state dict: torch.save(ckpt['state_dict'], 'weights.pth')"
            ) from exc
        raise WeightsError(f"{path}: cannot be read by torch.load(weights_only=True) ({first[:200]})") from exc
    _check_integrity(obj, path)
    meta = obj.get("meta") if isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping) else {}
    if meta.get("runtime_state"):  # a runtime (e.g. fsdp2) stored the weights elsewhere (engine/runtimes.py)
        convert = meta.get("runtime_convert")
        raise WeightsError(f"{path}: holds {meta['runtime_state']}, not weights; "
                           + (f"consolidate them first: {str(convert).replace('{dir}', str(path.parent))}" if convert else
                              f"resume it with [runner] distributed = '{meta.get('runtime')}'"))
    return unwrap_state_dict(obj, str(path)), dict(meta)


def _check_integrity(obj: Any, path: Path) -> None:
    """Verify (and drop) the ``checksum`` entry of a selfsup training checkpoint loaded from
    ``path``; a file without one is taken as it is. Raises :class:`WeightsError` on a mismatch."""
    if not isinstance(obj, dict):
        return
    from .checksum import CHECKSUM_KEY, ChecksumMismatch, verify_checksum

    try:
        verify_checksum(obj)
    except ChecksumMismatch as exc:
        raise WeightsError(f"{path}: is damaged: {exc}") from exc
    obj.pop(CHECKSUM_KEY, None)


def unwrap_state_dict(obj: Any, source: str) -> StateDict:
    """The tensor state dict inside a loaded file: ``obj`` itself, or its ``state_dict`` /
    ``model`` / ``model_state_dict`` / ``module`` / ``teacher`` / ``net`` entry (up to three
    levels); non-tensor entries are left out and a DDP ``module.`` prefix on every key is
    removed. ``source`` names the file in errors."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and not all(_is_tensor(v) for v in obj.values()):
            inner = next((obj[k] for k in ("state_dict", "model", "model_state_dict", "module", "teacher", "net")
                          if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and _is_tensor(v)}
    if not state:
        raise WeightsError(f"{source}: holds no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def split_prefix(state: Mapping[str, Any], prefix: str) -> tuple[StateDict, dict[str, list[str]]]:
    """``(kept, dropped)``: the keys under ``prefix`` with it removed, and every other key
    grouped by its first component."""
    kept: StateDict = {}
    dropped: dict[str, list[str]] = {}
    for key, value in state.items():
        if key.startswith(prefix):
            kept[key[len(prefix):]] = value
        else:
            dropped.setdefault(key.split(".", 1)[0], []).append(key)
    return kept, dropped


def select_prefix(state: Mapping[str, Any], prefix: str, source: str) -> tuple[StateDict, dict[str, list[str]]]:
    """:func:`split_prefix`, refusing a ``prefix`` that no key of ``source`` starts with."""
    kept, dropped = split_prefix(state, prefix)
    if not kept:
        found = sorted({k.split(".", 1)[0] + "." for k in state})
        raise WeightsError(f"no key of {source} starts with prefix {prefix!r}; prefixes found: {', '.join(found[:10])}")
    return kept, dropped


# -- safetensors ------------------------------------------------------------------------------
def _failure(path: Path, exc: BaseException) -> SafetensorsError:
    """One line for an error the package raised while reading ``path``."""
    if isinstance(exc, OSError):
        return SafetensorsError(f"{path}: cannot read ({exc.strerror or exc})")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "incomplete" in detail.lower() or "outside" in detail.lower():
        return SafetensorsError(f"{path}: a tensor lies outside the file (truncated?): {detail}")
    return SafetensorsError(f"{path}: not a safetensors file, or damaged ({detail})")


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` (name -> tensor, any device; copied to CPU) to ``path`` atomically.

    ``metadata`` goes to the header's ``__metadata__`` (values turned into strings). Tensors
    that share memory (tied weights, views) are written as independent copies.
    """
    from safetensors.torch import save

    seen: set[int] = set()
    plain: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        value = tensor.detach().to("cpu")
        storage = value.untyped_storage().data_ptr() if value.numel() else -1
        if storage in seen or not value.is_contiguous():
            value = value.contiguous() if not value.is_contiguous() else value.clone()
        elif storage != -1:
            seen.add(storage)
        plain[name] = value
    try:
        blob = save(plain, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SafetensorsError(f"{path}: cannot write safetensors ({str(exc).splitlines()[0]})") from None
    atomic_write(path, lambda handle: handle.write(blob))


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` table of a ``.safetensors`` file (empty if it has none)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # the package raises its own SafetensorError, OSError, ...
        raise _failure(path, exc) from None


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file onto the CPU (names in the header's sorted
    order). Every dtype the package knows is read, U16/U32/U64 and complex included."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # the package raises its own SafetensorError, OSError, ...
        raise _failure(path, exc) from None


__all__ = ["SafetensorsError", "StateDict", "WeightsError", "load_safetensors", "read_safetensors_metadata",
           "read_state_dict", "save_safetensors", "select_prefix", "split_prefix", "unwrap_state_dict"]
