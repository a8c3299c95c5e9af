"""Devices, precision, determinism and model preparation for the trainer."""
from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import SelfSupError


class BatchNormNd(nn.modules.batchnorm._BatchNorm):
    """BatchNorm for inputs of any rank >= 2 (``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``).

    What :class:`torch.nn.SyncBatchNorm` becomes when the run is not distributed: same
    parameter and buffer names, so checkpoints move freely between the two.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:  # noqa: A002 - torch's name
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}")


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.SyncBatchNorm`` in ``module`` by an equivalent :class:`BatchNormNd`."""
    if isinstance(module, nn.SyncBatchNorm):
        replacement = BatchNormNd(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                replacement.weight = module.weight
                replacement.bias = module.bias
        if module.track_running_stats:
            replacement.running_mean = module.running_mean
            replacement.running_var = module.running_var
            replacement.num_batches_tracked = module.num_batches_tracked
        replacement.training = module.training
        return replacement
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def has_conv2d(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def use_channels_last(choice: bool | str, device: torch.device, model: nn.Module) -> bool:
    """Whether to run ``model`` in channels_last: ``choice`` (the ``[runner] channels_last``
    key), where ``"auto"`` means for models with 2-d convolutions on CUDA or the CPU.

    On the CPU too: oneDNN's convolutions are faster in NHWC. ``benchmarks/channels_last.py``
    (one training step, one thread, a 2-core x86 CPU with AVX-512) measured 1.12-1.16x for
    ResNet-18 width 16 at 28 px, ResNet-18 at 32 px and ResNet-50 at 96 px
    (``benchmarks/results/channels_last_cpu.json``)."""
    if choice == "auto":
        return device.type in ("cuda", "cpu") and has_conv2d(model)
    return bool(choice)


def device_type_of(requested: str) -> str:
    """``"cuda"`` or ``"cpu"``: the kind of device ``requested`` (``auto``, ``cuda:1``, ...)
    will resolve to, known before torch.distributed is set up (it picks the backend)."""
    return "cuda" if (requested == "auto" and torch.cuda.is_available()) or requested.startswith("cuda") else "cpu"


def resolve_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SelfSupError(f"device {requested!r} was asked for but CUDA is not available; use device = 'cpu' or 'auto'")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SelfSupError("device 'mps' was asked for but MPS is not available; use device = 'cpu' or 'auto'")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX512-BF16 or AMX): there bf16
    autocast trains conv nets about 1.5x faster than fp32 (``benchmarks/precision.py``)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def resolve_precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). ``auto``: bf16 on GPUs that support it, else fp32 (also
    on CPUs with native bf16, so that a CPU result does not depend on the CPU model; ask for
    ``bf16`` there to train about 1.5x faster). ``fastest``: as ``auto``, and bf16 on CPUs with
    native bf16 as well (the quick start's choice: fast where it can be, never emulated)."""
    if requested == "fastest":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        requested = "auto"
    if requested == "fp32":
        return None
    if requested == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise SelfSupError("precision 'bf16' is not supported by this GPU; use precision = 'fp16' or 'fp32'")
        if device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn("precision 'bf16' on a CPU without native bf16 (AVX512-BF16 or AMX) is emulated and "
                          "slower than fp32; use precision = 'fp32'", stacklevel=2)
        return torch.bfloat16
    if requested == "fp16":
        if device.type != "cuda":
            raise SelfSupError(f"precision 'fp16' needs a CUDA device (this run uses {device}); use 'bf16' or 'fp32'")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def seed_everything(seed: int, deterministic: bool, benchmark: bool) -> None:
    """Seed Python, NumPy and torch; configure cuDNN and deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = benchmark


def unwrap(model: Any) -> nn.Module:
    """The algorithm inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None or not isinstance(inner, nn.Module):
            return model
        model = inner


__all__ = [
    "BatchNormNd",
    "cpu_has_native_bf16",
    "device_type_of",
    "has_conv2d",
    "resolve_device",
    "resolve_precision",
    "revert_sync_batchnorm",
    "seed_everything",
    "unwrap",
    "use_channels_last",
]
