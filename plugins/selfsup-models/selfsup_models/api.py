"""Build one component in one call, outside a config: the library entry points.

``build_backbone("ResNet", depth=18, in_channels=1, stem_type="cifar")`` builds exactly what a
config's ``[model.backbone]`` table with the same keys builds (same registry, same argument
validation, same initialisation), so a plain PyTorch loop and ``selfsup-run`` share their
modules. Every function is called with the component's registered name (a config's ``type``)
and its constructor's keyword arguments; a bad name or argument raises
:class:`selfsup_core.errors.ConfigError` with a did-you-mean.
"""
from __future__ import annotations

from typing import Any


def build_component(kind: str, type_name: str, **kwargs: Any) -> Any:
    """Build the ``kind`` component (``"backbones"``, ``"necks"``, ``"heads"``, ``"memories"``,
    ``"transforms"`` ...) registered as ``type_name`` with ``kwargs`` as its arguments.
    Nested component tables (``predictor = {"type": "NonLinearNeck", ...}``) are built too."""
    from selfsup_core.api import build

    return build({"type": type_name, **kwargs}, kind, path=kind)


def build_backbone(type_name: str, **kwargs: Any) -> Any:
    """A backbone, e.g. ``build_backbone("ResNet", depth=18, out_indices=[4])``; it returns a
    tuple of feature maps, as in a config."""
    return build_component("backbones", type_name, **kwargs)


def build_neck(type_name: str, **kwargs: Any) -> Any:
    """A neck, e.g. ``build_neck("NonLinearNeck", in_channels=512, hid_channels=2048,
    out_channels=128)``; takes and returns a list/tuple of tensors."""
    return build_component("necks", type_name, **kwargs)


def build_head(type_name: str, **kwargs: Any) -> Any:
    """A head (a loss module), e.g. ``build_head("ContrastiveHead", temperature=0.1)``."""
    return build_component("heads", type_name, **kwargs)


def build_memory(type_name: str, **kwargs: Any) -> Any:
    """A memory bank, e.g. ``build_memory("SimpleMemory", length=60000, feat_dim=128, momentum=0.5)``."""
    return build_component("memories", type_name, **kwargs)


__all__ = ["build_backbone", "build_component", "build_head", "build_memory", "build_neck"]
