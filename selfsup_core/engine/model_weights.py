"""Putting saved weights into a built model: a training checkpoint's ``state_dict``
(:func:`load_weights`, for ``selfsup-run eval`` and plugins' commands such as selfsup-mim's
visualisation) and the one-line summary of a partial load (:func:`load_summary`, for
``init_cfg`` Pretrained and selfsup-eval's ``min_loaded_share`` check).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import describe_exception

#: names shown per category in a summary line
SHOWN_NAMES = 3


def summarise_names(names: Sequence[str], shown: int = SHOWN_NAMES) -> str:
    """``"a, b, c (+7 more)"``: at most ``shown`` names of a list."""
    head = ", ".join(names[:shown])
    return head + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def load_summary(loaded: int, missing: Sequence[str], unexpected: Sequence[str], mismatched: Sequence[str],
                 what: str = "tensors") -> str:
    """``"loaded N of M tensors (K missing, U unexpected, S shape mismatches; missing: a, b (+3 more))"``;
    ``M`` = loaded + missing + mismatched (the module's own tensors)."""
    total = loaded + len(missing) + len(mismatched)
    text = (f"loaded {loaded} of {total} {what} ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} shape mismatches")
    examples = [f"{label}: {summarise_names(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
    return text + ("; " + "; ".join(examples) if examples else "") + ")"


def load_weights(model: Any, path: str) -> dict[str, Any]:
    """Load a training checkpoint (or a bare state dict of the whole model) into ``model``
    strictly; returns the checkpoint's ``meta`` (``{}`` for a bare state dict). A missing
    file or a state dict that does not fit is one-line
    :class:`~selfsup_core.engine.checkpoint.CheckpointError` naming ``--checkpoint``."""
    from . import checkpoint as ckpt

    if not Path(path).is_file():
        raise ckpt.CheckpointError(f"--checkpoint {path}: no such checkpoint file")
    state = ckpt.load(path)
    weights = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(weights, Mapping):
        raise ckpt.CheckpointError(f"checkpoint {path} holds no state dict")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise ckpt.CheckpointError(
            f"checkpoint {path} does not fit this config's model: {describe_exception(exc).splitlines()[0]}; "
            "evaluate it with the config it was trained with") from exc
    meta = state.get("meta", {}) if isinstance(state, Mapping) else {}
    return dict(meta) if isinstance(meta, Mapping) else {}


__all__ = ["load_summary", "load_weights", "summarise_names"]
