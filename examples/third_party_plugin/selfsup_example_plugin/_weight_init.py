"""``init_cfg`` handling shared by this plugin's components.

selfsup components take ``init_cfg``: a table describing how to initialise their weights. This
example supports two values:

* ``None`` (the default): keep PyTorch's default initialisation of every layer;
* ``{type = "Kaiming"}``: Kaiming-normal weights for conv and linear layers (``mode``, default
  ``"fan_out"``, and ``nonlinearity``, default ``"relu"``, may be given), zero biases, and
  weight 1 / bias 0 for normalisation layers.

Anything else raises ``ValueError``: a typo must not silently fall back to another scheme.
"""
from __future__ import annotations

from typing import Any

from torch import nn

SUPPORTED_INIT_TYPES = ("Kaiming",)
_KAIMING_KEYS = {"type", "mode", "nonlinearity"}
_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def check_init_cfg(init_cfg: dict[str, Any] | None, owner: str) -> dict[str, Any] | None:
    """Validate ``init_cfg`` for the component named ``owner``; return a copy (or ``None``)."""
    if init_cfg is None:
        return None
    if not isinstance(init_cfg, dict):
        raise ValueError(f"{owner}: init_cfg must be a table such as {{type = \"Kaiming\"}}, got {init_cfg!r}")
    kind = init_cfg.get("type")
    if kind not in SUPPORTED_INIT_TYPES:
        raise ValueError(
            f"{owner}: init_cfg type {kind!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_INIT_TYPES)} (or leave init_cfg out for PyTorch's defaults)"
        )
    unknown = sorted(set(init_cfg) - _KAIMING_KEYS)
    if unknown:
        raise ValueError(
            f"{owner}: unknown init_cfg key(s) {', '.join(unknown)} for type 'Kaiming'; "
            f"it takes {', '.join(sorted(_KAIMING_KEYS - {'type'}))}"
        )
    return dict(init_cfg)


def apply_init_cfg(module: nn.Module, init_cfg: dict[str, Any] | None) -> None:
    """Initialise every layer of ``module`` as a validated ``init_cfg`` says (``None``: no-op)."""
    if init_cfg is None:
        return
    mode = init_cfg.get("mode", "fan_out")
    nonlinearity = init_cfg.get("nonlinearity", "relu")
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode=mode, nonlinearity=nonlinearity)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, _NORM_TYPES) and getattr(layer, "weight", None) is not None:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
