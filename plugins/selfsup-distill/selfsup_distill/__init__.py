"""selfsup-distill: self-distillation with a momentum teacher and no labels.

- :class:`DINO` (Caron et al., ICCV 2021): a student matches the centred, sharpened output
  distribution of an EMA teacher across multi-crop views (ResNet or ViT backbones).
- :class:`iBOT` (Zhou et al., ICLR 2022): DINO's [CLS] objective plus masked-patch
  self-distillation (the student sees blockwise-masked global views, the teacher the full ones).
- :class:`DINONeck` (the head's MLP and L2-normalised bottleneck), :class:`DINOHead` (the
  weight-normalised last layer, centring, temperatures, the loss), :class:`iBOTHead`.
- :class:`DINOHook`: teacher-temperature epoch, weight-decay cosine, per-parameter gradient
  clipping and the last layer frozen in the first epoch.

The classes are imported lazily (``selfsup-run list`` reads entry-point metadata only).
"""
from __future__ import annotations

from typing import Any

__all__ = ["DINO", "DINOHead", "DINOHook", "DINONeck", "iBOT", "iBOTHead"]

_WHERE = {"DINO": "dino", "iBOT": "ibot", "DINONeck": "heads", "DINOHead": "heads", "iBOTHead": "heads",
          "DINOHook": "hooks"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
