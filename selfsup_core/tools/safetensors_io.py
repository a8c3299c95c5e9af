"""Read and write ``.safetensors`` files through the ``safetensors`` package.

A thin layer over ``safetensors.torch`` that adds what the package leaves to its caller:
atomic writes (a crash never leaves half a file under the final name), tensors that share
memory or are not contiguous written as independent values, and every failure as one
:class:`SafetensorsError` line naming the file. Every dtype the package knows is read,
including U16/U32/U64 and complex files from other tools.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SelfSupError
from ..fileio import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch


class SafetensorsError(SelfSupError):
    """A ``.safetensors`` file cannot be read or written."""


def _failure(path: Path, exc: BaseException) -> SafetensorsError:
    """One line for an error the package raised while reading ``path``."""
    if isinstance(exc, OSError):
        return SafetensorsError(f"{path}: cannot read ({exc.strerror or exc})")
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "incomplete" in detail.lower() or "outside" in detail.lower():
        return SafetensorsError(f"{path}: a tensor lies outside the file (truncated?): {detail}")
    return SafetensorsError(f"{path}: not a safetensors file, or damaged ({detail})")


def save_file(
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


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` table of a ``.safetensors`` file (empty if it has none)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # the package raises its own SafetensorError, OSError, ...
        raise _failure(path, exc) from None


def load_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file onto the CPU (names in the header's sorted order)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorsError:
        raise
    except Exception as exc:  # the package raises its own SafetensorError, OSError, ...
        raise _failure(path, exc) from None


__all__ = ["SafetensorsError", "load_file", "read_metadata", "save_file"]
