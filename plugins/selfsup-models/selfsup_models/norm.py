"""``norm_cfg`` -> normalisation layer.

A ``norm_cfg`` is a plain dict (a TOML table under a key ending in ``_cfg``), e.g.
``{type = "BN"}``, ``{type = "GN", num_groups = 32}``, ``{type = "SyncBN", requires_grad = false}``.

Types (MMCV / MMSelfSup 0.x names):

=============  ==========================================================================
``BN``         batch norm for the layer's context: ``BatchNorm2d`` for conv features
               (``dim=2``, the default), ``BatchNorm1d`` for vectors ``(N, C)`` / ``(N, C, L)``
               when the caller passes ``dim=1`` (necks and heads do)
``BN1d``       ``nn.BatchNorm1d`` whatever the context (``BN2d``, ``BN3d`` likewise)
``SyncBN``     ``nn.SyncBatchNorm`` (accepts any ``(N, C, ...)`` input). Outside
               ``torch.distributed`` it is replaced by plain batch norm with
               :func:`revert_sync_batchnorm` (the trainer does this), so one config runs
               on a CPU, one GPU or many
``GN``         ``nn.GroupNorm``; needs ``num_groups``
``LN``         layer norm over the channels: for conv features (``dim=2``)
               :class:`LayerNorm2d` (channels-last LayerNorm applied to ``(N, C, H, W)``),
               for tokens / vectors (``dim=1``) plain ``nn.LayerNorm`` over the last axis
``IN``         ``nn.InstanceNorm2d`` (``InstanceNorm1d`` for ``dim=1``); ``IN1d``/``IN2d``
``Identity``   no normalisation (also ``norm_cfg = None``)
=============  ==========================================================================

Other keys pass through to the layer: ``eps``, ``momentum``, ``affine``,
``track_running_stats`` (batch/instance norm), ``num_groups`` (GN),
``elementwise_affine`` (LN). ``requires_grad = false`` freezes the affine parameters.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

# One implementation, shared with the trainer, which reverts SyncBN outside torch.distributed.
from selfsup_core.api import BatchNormNd, revert_sync_batchnorm

__all__ = [
    "NORM_TYPES",
    "BatchNormNd",
    "LayerNorm2d",
    "build_norm_layer",
    "revert_sync_batchnorm",
]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of ``(N, C, H, W)`` features (ConvNeXt style).

    Parameters and state-dict keys are those of ``nn.LayerNorm(num_channels)``.
    Input ``(N, C, H, W)`` -> output of the same shape; a 2-d or 3-d input is normalised
    over its last axis like ``nn.LayerNorm``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            return super().forward(x)
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _batch_norm(dim: int) -> type[nn.Module]:
    return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim]


def _instance_norm(dim: int) -> type[nn.Module]:
    return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]


_BN_KEYS = ("eps", "momentum", "affine", "track_running_stats")
_IN_KEYS = ("eps", "momentum", "affine", "track_running_stats")

# type -> (factory(num_features, dim, kwargs), allowed keys)
_Factory = Callable[[int, int, dict[str, Any]], nn.Module]
NORM_TYPES: dict[str, tuple[_Factory, tuple[str, ...]]] = {
    "BN": (lambda n, d, kw: _batch_norm(d)(n, **kw), _BN_KEYS),
    "BN1d": (lambda n, d, kw: nn.BatchNorm1d(n, **kw), _BN_KEYS),
    "BN2d": (lambda n, d, kw: nn.BatchNorm2d(n, **kw), _BN_KEYS),
    "BN3d": (lambda n, d, kw: nn.BatchNorm3d(n, **kw), _BN_KEYS),
    "SyncBN": (lambda n, d, kw: nn.SyncBatchNorm(n, **kw), _BN_KEYS),
    "GN": (lambda n, d, kw: nn.GroupNorm(num_channels=n, **kw), ("num_groups", "eps", "affine")),
    "LN": (
        lambda n, d, kw: (LayerNorm2d(n, **kw) if d == 2 else nn.LayerNorm(n, **kw)),
        ("eps", "elementwise_affine"),
    ),
    "IN": (lambda n, d, kw: _instance_norm(d)(n, **kw), _IN_KEYS),
    "IN1d": (lambda n, d, kw: nn.InstanceNorm1d(n, **kw), _IN_KEYS),
    "IN2d": (lambda n, d, kw: nn.InstanceNorm2d(n, **kw), _IN_KEYS),
    "Identity": (lambda n, d, kw: nn.Identity(), ()),
}


def _did_you_mean(word: str, candidates: Any) -> str:
    try:
        from selfsup_core.api import did_you_mean
    except ImportError:  # pragma: no cover - the core is a dependency
        return ""
    return did_you_mean(word, candidates)


def build_norm_layer(cfg: Mapping[str, Any] | None, num_features: int, *, dim: int = 2) -> nn.Module:
    """Build the normalisation layer a ``norm_cfg`` describes.

    Args:
        cfg: ``{"type": ..., **options}`` (see the module docstring) or ``None`` for
            ``nn.Identity``. Not modified.
        num_features: channels ``C`` of the input.
        dim: the layer's context: ``2`` for conv features ``(N, C, H, W)`` (default),
            ``1`` for vectors ``(N, C)`` / sequences ``(N, C, L)`` and, for ``LN``, tokens
            ``(N, L, C)``. Only the context-dependent types (``BN``, ``LN``, ``IN``) read it.

    Returns:
        the layer (an ``nn.Module``); with ``requires_grad=False`` its parameters are frozen.

    Raises:
        ValueError: unknown type (the message lists the known ones), an option the type does
            not take, or ``GN`` without ``num_groups``.
    """
    if cfg is None:
        return nn.Identity()
    if not isinstance(cfg, Mapping):
        raise ValueError(f"norm_cfg must be a table like {{type = \"BN\"}}, got {cfg!r}")
    options = dict(cfg)
    if "type" not in options:
        raise ValueError(f"norm_cfg {dict(cfg)!r} has no 'type'; known types: {', '.join(NORM_TYPES)}")
    norm_type = options.pop("type")
    if norm_type is None:
        norm_type = "Identity"
    if norm_type not in NORM_TYPES:
        raise ValueError(
            f"norm_cfg: unknown norm type {norm_type!r}{_did_you_mean(str(norm_type), NORM_TYPES)}; "
            f"known types: {', '.join(NORM_TYPES)}"
        )
    if dim not in (1, 2, 3):
        raise ValueError(f"build_norm_layer: dim must be 1, 2 or 3, got {dim!r}")
    requires_grad = options.pop("requires_grad", True)
    factory, allowed = NORM_TYPES[norm_type]
    unknown = [key for key in options if key not in allowed]
    if unknown:
        hint = _did_you_mean(unknown[0], allowed)
        raise ValueError(
            f"norm_cfg: {norm_type} does not take {', '.join(map(repr, unknown))}{hint}; "
            f"it takes: {', '.join(('requires_grad',) + allowed)}"
        )
    if norm_type == "GN":
        if "num_groups" not in options:
            raise ValueError("norm_cfg: GN needs num_groups, e.g. {type = \"GN\", num_groups = 32}")
        if num_features % int(options["num_groups"]) != 0:
            raise ValueError(
                f"norm_cfg: GN num_groups={options['num_groups']} does not divide {num_features} channels"
            )
    layer = factory(int(num_features), dim, options)
    if not requires_grad:
        for param in layer.parameters():
            param.requires_grad_(False)
    return layer


