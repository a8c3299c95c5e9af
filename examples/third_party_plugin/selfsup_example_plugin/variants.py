"""Bulk registration through the ``selfsup_register_components`` hook (opt-in example).

Entry points suit a fixed set of names. A plugin that generates many variants of a model
family can register them from code instead: a module (or object) installed in the
``selfsup.plugins`` entry-point group with a function ``selfsup_register_components(register)``.
selfsup calls it once per process, the first time a registry is used, and attributes every
component to the plugin's distribution (duplicates are detected as for entry points).

This module is *not* wired into this package's ``pyproject.toml``, so ``selfsup-run list`` shows
exactly the two entry-point components. To enable it, add::

    [project.entry-points."selfsup.plugins"]
    tinyconvnet-variants = "selfsup_example_plugin.variants"

and reinstall. Plugin modules are imported by ``selfsup-run list``, so this one does not
import torch: each factory imports ``TinyConvNet`` only when a config builds it. Module-level
functions whose names start with ``selfsup_`` are taken as hook implementations, so helpers
here use other names.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Variant name -> block widths.
VARIANTS: dict[str, list[int]] = {
    "TinyConvNetS": [16, 32, 64],
    "TinyConvNetM": [32, 64, 128],
    "TinyConvNetL": [64, 128, 256],
}


def make_variant(widths: list[int]) -> Callable[..., Any]:
    """A factory building ``TinyConvNet`` with fixed ``widths``; its signature is what a
    config may set (selfsup validates keys and types against it)."""

    def factory(in_channels: int = 1, norm_cfg: dict | None = None, init_cfg: dict | None = None) -> Any:
        """TinyConvNet with fixed widths; see :class:`~selfsup_example_plugin.tiny_convnet.TinyConvNet`."""
        from .tiny_convnet import TinyConvNet

        return TinyConvNet(in_channels=in_channels, widths=widths, norm_cfg=norm_cfg, init_cfg=init_cfg)

    return factory


def selfsup_register_components(register: Callable[[str, str, Any], None]) -> None:
    """Register one backbone per entry of :data:`VARIANTS`."""
    for name, widths in VARIANTS.items():
        register("backbones", name, make_variant(widths))
