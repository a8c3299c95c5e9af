"""selfsup-example-plugin: an out-of-tree selfsup plugin, as a stranger would write one.

It provides two components through entry points (see ``pyproject.toml``):

* algorithm ``VICReg`` (:class:`selfsup_example_plugin.vicreg.VICReg`);
* backbone ``TinyConvNet`` (:class:`selfsup_example_plugin.tiny_convnet.TinyConvNet`).

This module must not import torch: ``selfsup-run list`` and ``--help`` stay torch-free, and
the core imports a component's module only when a config uses it. The names below are
therefore loaded lazily, on first attribute access (``from selfsup_example_plugin import VICReg``).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "TinyConvNet": "selfsup_example_plugin.tiny_convnet",
    "VICReg": "selfsup_example_plugin.vicreg",
    "vicreg_loss": "selfsup_example_plugin.vicreg",
}

__all__ = ["TinyConvNet", "VICReg", "__version__", "vicreg_loss"]


def __getattr__(name: str) -> Any:
    """Import ``TinyConvNet``, ``VICReg`` and ``vicreg_loss`` (and torch) on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
