"""Read and write ``.safetensors`` files without the ``safetensors`` package.

The format (https://github.com/huggingface/safetensors): an unsigned little-endian 64-bit
header length ``N``, ``N`` bytes of JSON mapping each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets into the byte buffer that follows) plus an optional
``"__metadata__"`` table of strings, then the tensors' raw little-endian bytes. Files written
here load with ``safetensors.torch.load_file`` and files from the Hugging Face hub (timm) load
here, so neither direction needs the package.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING

from ..errors import SelfSupError
from ..fileio import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    import torch

_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(SelfSupError):
    """A ``.safetensors`` file cannot be read or written."""


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    name = _DTYPE_NAMES.get(code)
    dtype = getattr(torch, name, None) if name else None
    if dtype is None:
        raise KeyError(code)
    return dtype


def _dtype_code(dtype: torch.dtype) -> str:
    for code, name in _DTYPE_NAMES.items():
        if str(dtype) == f"torch.{name}":
            return code
    raise SafetensorsError(f"safetensors cannot hold {dtype} tensors")


def save_file(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` (name -> tensor, any device; copied to CPU) to ``path`` atomically.

    ``metadata`` goes to the header's ``__metadata__`` (string values only). Tensors that
    share memory are written as independent copies, as the format requires.
    """
    import torch

    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        raw = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
        header[name] = {"dtype": _dtype_code(tensor.dtype), "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the reference writer aligns the buffer to 8 bytes
    def write(handle: IO[bytes]) -> None:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for raw in blobs:
            handle.write(raw)

    atomic_write(path, write)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` table of a ``.safetensors`` file (empty if it has none)."""
    header, _ = _read_header(Path(path))
    return dict(header.get("__metadata__") or {})


def load_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read every tensor of a ``.safetensors`` file onto the CPU, in file order."""
    import torch

    path = Path(path)
    header, start = _read_header(path)
    with open(path, "rb") as handle:
        handle.seek(start)
        buffer = handle.read()
    tensors: dict[str, torch.Tensor] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _torch_dtype(entry["dtype"])
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(s) for s in entry["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed header entry ({exc!s})") from None
        if not 0 <= begin <= end <= len(buffer):
            raise SafetensorsError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
        count = 1
        for size in shape:
            count *= size
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(bytearray(buffer[begin:end]), dtype=torch.uint8)
        if flat.numel() != count * torch.empty((), dtype=dtype).element_size():
            raise SafetensorsError(f"{path}: tensor {name!r} has {flat.numel()} bytes, not {shape} of {dtype}")
        tensors[name] = flat.view(dtype).reshape(shape)
    return tensors


def _read_header(path: Path) -> tuple[dict[str, dict], int]:
    """The parsed JSON header and the byte offset where the tensor data starts."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER:
                raise SafetensorsError(f"{path}: not a safetensors file (header length {length})")
            text = handle.read(length)
    except OSError as exc:
        raise SafetensorsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SafetensorsError(f"{path}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: not a safetensors file (its header is not a JSON object)")
    return header, 8 + length


__all__ = ["SafetensorsError", "load_file", "read_metadata", "save_file"]
