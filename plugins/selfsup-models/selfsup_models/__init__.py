"""selfsup-models: backbones, necks, heads and memories for selfsup.

Library use: ``build_backbone``, ``build_neck``, ``build_head``, ``build_memory`` and
``build_component`` (:mod:`selfsup_models.api`) build one component in one call;
:mod:`selfsup_models.losses` has the losses as modules for a plain PyTorch loop. Importing
this package does not import torch.
"""
from __future__ import annotations

from typing import Any

_API = ("build_backbone", "build_component", "build_head", "build_memory", "build_neck")


def __getattr__(name: str) -> Any:
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'selfsup_models' has no attribute {name!r}")


__all__ = list(_API)
