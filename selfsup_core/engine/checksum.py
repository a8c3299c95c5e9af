"""A SHA-256 checksum of a checkpoint's contents, stored inside the checkpoint.

``torch.load`` does not check the CRCs of the zip records it reads, so a checkpoint whose
tensor bytes were changed on disk (a bad sector, a copy cut short and patched, a tool that
scrambled it) loads without complaint and the damage only shows up iterations later as a
non-finite loss. So a training checkpoint carries one more top-level entry::

    "checksum": "sha256:<64 hex digits>"

the SHA-256 of a canonical walk over every *other* entry: mapping keys and values in their
order, list and tuple items, set items sorted by ``repr``, each tensor's dtype, shape and raw
bytes, and the ``repr`` of every other value (numbers, strings, None ...). The entry is a plain string, so the file
still loads with ``torch.load(weights_only=True)`` and other tools (MMSelfSup's
``load_checkpoint``, ``torch.load(...)["state_dict"]``) read it as before.

:func:`add_checksum` is called by :func:`selfsup_core.engine.checkpoint.atomic_save` for
training checkpoints; :func:`verify_checksum` by every reader of one (resume, eval, export,
``init_cfg`` Pretrained). A checkpoint without the entry (written before checksums, or by
another framework) loads as before.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

CHECKSUM_KEY = "checksum"
_PREFIX = "sha256:"


class ChecksumMismatch(ValueError):
    """The stored checksum does not match the loaded contents; the message says how."""


def state_digest(state: Mapping[str, Any]) -> str:
    """The hex SHA-256 of ``state`` without its ``checksum`` entry (see the module docstring).

    Receives a checkpoint dict as saved or as loaded (tensors on any device; CUDA tensors are
    copied to the CPU to be hashed)."""
    digest = hashlib.sha256()
    _feed(digest, {k: v for k, v in state.items() if k != CHECKSUM_KEY})
    return digest.hexdigest()


def add_checksum(state: Mapping[str, Any]) -> dict[str, Any]:
    """A shallow copy of ``state`` with its ``checksum`` entry (computed over everything else)."""
    return {**{k: v for k, v in state.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: _PREFIX + state_digest(state)}


def verify_checksum(state: Mapping[str, Any]) -> bool:
    """Check a loaded checkpoint's ``checksum`` entry against its contents.

    Returns True when the entry is there and matches, False when there is none (an older or
    foreign checkpoint). Raises :class:`ChecksumMismatch` when it is there and does not match
    (or is not a checksum string): the file was changed after it was written."""
    stored = state.get(CHECKSUM_KEY)
    if stored is None:
        return False
    if not isinstance(stored, str) or not stored.startswith(_PREFIX) or len(stored) != len(_PREFIX) + 64:
        raise ChecksumMismatch(f"its checksum entry is not a '{_PREFIX}<hex>' string ({str(stored)[:40]!r})")
    actual = state_digest(state)
    if actual != stored[len(_PREFIX):]:
        raise ChecksumMismatch(
            f"its contents do not match the SHA-256 checksum stored in it (stored {stored[len(_PREFIX):][:12]}..., "
            f"contents {actual[:12]}...), so bytes changed after it was written")
    return True


def _token(digest: Any, tag: bytes, payload: bytes | memoryview = b"") -> None:
    """One length-prefixed token, so that no two different walks feed the same bytes."""
    digest.update(tag + memoryview(payload).nbytes.to_bytes(8, "little"))
    digest.update(payload)


def _feed(digest: Any, value: Any) -> None:
    import torch

    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.layout != torch.strided:
            tensor = tensor.to_dense()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        _token(digest, b"T", f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        if tensor.numel():
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
            _token(digest, b"B", memoryview(raw))
    elif isinstance(value, Mapping):
        _token(digest, b"D", str(len(value)).encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (set, frozenset)):  # unordered: in the order of the items' reprs
        _token(digest, b"Z", str(len(value)).encode())
        for item in sorted(value, key=repr):
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        _token(digest, b"L" if isinstance(value, list) else b"U", str(len(value)).encode())
        for item in value:
            _feed(digest, item)
    else:
        _token(digest, b"S", f"{type(value).__name__}:{value!r}".encode())


__all__ = ["CHECKSUM_KEY", "ChecksumMismatch", "add_checksum", "state_digest", "verify_checksum"]
