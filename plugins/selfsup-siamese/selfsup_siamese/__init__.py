"""selfsup-siamese: siamese self-supervised methods without negative pairs.

- :class:`BYOL` (Grill et al., NeurIPS 2020): an online network predicts a momentum (EMA)
  target network's projection of another view.
- :class:`SimSiam` (Chen & He, CVPR 2021): the same without a momentum encoder, with a
  stop-gradient; :class:`SimSiamHook` keeps the predictor's lr fixed.
- :class:`BarlowTwins` (Zbontar et al., ICML 2021): the cross-correlation of two views'
  projections is pushed towards the identity.

The classes are imported lazily (``selfsup-run list`` reads entry-point metadata only).
"""
from __future__ import annotations

from typing import Any

__all__ = ["BYOL", "BarlowTwins", "SimSiam", "SimSiamHook"]

_WHERE = {"BYOL": "byol", "SimSiam": "simsiam", "BarlowTwins": "barlowtwins", "SimSiamHook": "hooks"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
