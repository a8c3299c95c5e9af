"""Backbone weights out of training checkpoints: where the online backbone's keys are, why the
other key groups are left out, and writing ``.pth`` or ``.safetensors`` for ``selfsup-run
export`` / ``import-weights`` / ``export-hub``. Reading files is the core's
(``selfsup_core.api.read_state_dict``); the key layouts of other libraries are
:mod:`selfsup_models.layouts`'."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup_core.api import WeightsError, read_state_dict, save_safetensors, select_prefix

if TYPE_CHECKING:  # pragma: no cover
    import torch

StateDict = dict[str, "torch.Tensor"]

#: Where the online (query / student) backbone lives in training checkpoints, most specific
#: first: selfsup and MMSelfSup (``backbone.``), OpenSelfSup MoCo/NPID-style encoders
#: (``encoder_q.0.``), OpenSelfSup BYOL (``online_net.0.``), DDP-wrapped models.
BACKBONE_PREFIXES = ("backbone.", "module.backbone.", "model.backbone.", "encoder_q.0.", "online_net.0.",
                     "module.encoder_q.0.", "module.online_net.0.")

#: Why a group of training-checkpoint keys is not exported, by top-level name.
_DROP_REASONS = {
    "encoder_k": "momentum (key) encoder copy",
    "momentum_encoder": "momentum encoder copy",
    "target_backbone": "momentum (target) backbone copy",
    "target_neck": "momentum (target) neck copy",
    "target_net": "momentum (target) network copy",
    "teacher": "teacher copy",
    "neck": "projection neck (pre-training only)",
    "head": "pre-training head",
    "online_net": "online projector (pre-training only)",
    "encoder_q": "query projector (pre-training only)",
    "queue": "negative-key queue",
    "queue2": "negative-key queue",
    "queue_ptr": "queue pointer",
    "queue2_ptr": "queue pointer",
    "memory_bank": "memory bank",
    "fc": "classifier (not part of a backbone)",
}


def find_backbone_prefix(state: Mapping[str, Any]) -> str | None:
    """The prefix of the online backbone's keys in a training checkpoint, or None when the
    keys have no known prefix (the file is already a bare backbone)."""
    for prefix in BACKBONE_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            return prefix
    return None


def drop_reason(group: str) -> str:
    """Why a top-level key group of a training checkpoint is left out of an export."""
    return _DROP_REASONS.get(group, "not under the backbone prefix")


def count_parameters(state: Mapping[str, torch.Tensor]) -> int:
    """Elements of the floating-point tensors, without BN statistics counters."""
    return sum(int(v.numel()) for k, v in state.items()
               if v.is_floating_point() and not k.endswith(("running_mean", "running_var")))


def output_format(out: str | os.PathLike[str], requested: str | None) -> str:
    """``pth`` or ``safetensors``: as requested, else from the file suffix, else ``pth``."""
    if requested:
        return requested
    return "safetensors" if str(out).endswith(".safetensors") else "pth"


def check_writable(out: Path, sources: list[Path], force: bool) -> None:
    """Refuse to overwrite an input, or an existing file without ``force``."""
    for source in sources:
        if out.exists() and source.exists() and out.resolve() == source.resolve():
            raise WeightsError(f"{out}: is the input file; write the weights to another path")
    if out.exists() and not force:
        raise WeightsError(f"{out}: exists; pass --force to overwrite it, or choose another path")
    if out.exists() and out.is_dir():
        raise WeightsError(f"{out}: is a directory; give a file name such as {out}/backbone.pth")


def write_state_dict(state: StateDict, out: Path, fmt: str, metadata: Mapping[str, str]) -> None:
    """Write ``state`` atomically: a plain ``torch.save`` dict, or safetensors with ``metadata``."""
    # clone: a view would drag its whole storage (e.g. a fused checkpoint buffer) into the file
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if fmt == "safetensors":
        save_safetensors(state, out, metadata=metadata)
        return
    from selfsup_core.api import atomic_save  # imports torch

    atomic_save(state, out)


__all__ = [
    "BACKBONE_PREFIXES",
    "WeightsError",
    "check_writable",
    "count_parameters",
    "drop_reason",
    "find_backbone_prefix",
    "output_format",
    "read_state_dict",
    "select_prefix",
    "write_state_dict",
]
