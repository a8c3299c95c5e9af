"""Any timm model as a backbone (optional: needs ``pip install timm`` or ``selfsup-models[timm]``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch

from ..init import BaseModule

__all__ = ["TimmBackbone"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as exc:
        raise ImportError(
            "TimmBackbone needs timm, which is not installed: pip install timm "
            "(or pip install 'selfsup-models[timm]')"
        ) from exc
    return timm


class TimmBackbone(BaseModule):
    """A ``timm.create_model`` model without its classifier.

    Args:
        model_name: a timm model name, e.g. ``"resnet50"``, ``"vit_small_patch16_224"``.
        pretrained: let timm load its pretrained weights. timm downloads them unless they
            are in its cache; prefer ``init_cfg = {type = "Pretrained", checkpoint = ...}``.
        features_only: build timm's multi-scale feature extractor; ``forward`` then returns
            the maps of ``out_indices``.
        out_indices: feature levels for ``features_only`` (timm's numbering; default: the last).
        in_channels: input image channels.
        drop_rate, drop_path_rate: passed to timm.
        init_cfg: applied after construction. Pretrained takes timm's own key names (a timm
            checkpoint or hub ``.safetensors``, ``selfsup-run export --to timm``) as well as
            ours (``timm_model.`` in front); the classifier, absent here, is reported unexpected.

    Output: a tuple of feature tensors: with ``features_only`` one map ``(N, C_i, H_i, W_i)``
    per level, else one entry, ``model.forward_features(x)`` (a map for conv nets, tokens
    ``(N, L, C)`` for transformers). ``out_channels`` is the channels of the last output.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        in_channels: int = 3,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        timm = _import_timm()
        kwargs: dict[str, Any] = dict(
            pretrained=pretrained, in_chans=in_channels, drop_rate=drop_rate, drop_path_rate=drop_path_rate
        )
        if features_only:
            kwargs["features_only"] = True
            if out_indices is not None:
                kwargs["out_indices"] = tuple(out_indices)
        else:
            if out_indices is not None:
                raise ValueError("TimmBackbone: out_indices needs features_only=true")
            kwargs["num_classes"] = 0
        try:
            self.timm_model = timm.create_model(model_name, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ValueError(f"TimmBackbone: timm has no model {model_name!r} (see timm.list_models())") from exc
            raise
        self.model_name = model_name
        self.features_only = features_only
        if features_only:
            channels = tuple(self.timm_model.feature_info.channels())
            if out_indices is None:
                channels = channels[-1:]
            self.feature_channels = channels
        else:
            self.feature_channels = (int(self.timm_model.num_features),)
        self.out_channels = self.feature_channels[-1]
        self.init_weights()

    def adapt_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Put ``timm_model.`` in front of timm's own key names (called by ``init_cfg``
        Pretrained before keys are matched; ``prefix`` is this module's place in the model)."""
        inner = f"{prefix}timm_model."
        if any(k.startswith(inner) for k in state):
            return state
        return {(inner + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(N, C_in, H, W)`` -> tuple of features (see the class docstring)."""
        if self.features_only:
            feats = self.timm_model(x)
            if len(feats) != len(self.feature_channels):
                feats = feats[-len(self.feature_channels):]
            return tuple(feats)
        return (self.timm_model.forward_features(x),)

