"""Classification heads: ClsHead (one linear classifier) and MultiClsHead (one per ResNet stage)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import nn

from ..init import BaseModule
from ..necks import single_feature, vit_cls_token
from ..norm import build_norm_layer

InitCfg = Union[dict, list[dict], None]


def accuracy(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy in percent (a 0-d tensor) of ``score (N, C)`` against ``labels (N,)``."""
    with torch.no_grad():
        return (score.argmax(dim=1) == labels).float().mean() * 100.0


def _linear_default_init(module: nn.Module) -> None:
    """MMSelfSup's classifier default: linear weights N(0, 0.01), biases 0; norms 1/0."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=0.01)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and sub.weight is not None:
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class ClsHead(BaseModule):
    """A linear classifier (module ``fc_cls``), for linear evaluation and supervised baselines.

    Args:
        with_avg_pool: global-average-pool a ``(N, C, H, W)`` input first.
        in_channels: input features ``C``.
        num_classes: number of classes.
        vit_backbone: the input is a ViT output; its class token is classified.
        init_cfg: initialisation on top of the default (weights N(0, 0.01), bias 0).

    ``forward(x) -> [scores (N, num_classes)]`` where ``x`` is the backbone's tuple with one
    feature; ``loss([scores], labels (N,)) -> {"loss": cross-entropy, "acc": top-1 %}``.
    The loss function is the attribute ``criterion`` (ODC swaps in a class-weighted one).
    """

    def __init__(
        self,
        with_avg_pool: bool = False,
        in_channels: int = 2048,
        num_classes: int = 1000,
        vit_backbone: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.vit_backbone = vit_backbone
        self.criterion: nn.Module = nn.CrossEntropyLoss()
        self.fc_cls = nn.Linear(in_channels, num_classes)
        self.init_weights()

    def default_init(self) -> None:
        _linear_default_init(self)

    def forward(self, x: Any) -> list[torch.Tensor]:
        feat = single_feature(x, type(self).__name__)
        if self.vit_backbone:
            feat = vit_cls_token(feat)
        if self.with_avg_pool:
            if feat.dim() != 4:
                raise ValueError(f"ClsHead with_avg_pool expects (N, C, H, W) features, got {tuple(feat.shape)}")
            feat = nn.functional.adaptive_avg_pool2d(feat, 1)
        return [self.fc_cls(feat.reshape(feat.size(0), -1))]

    def loss(self, cls_score: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        score = single_feature(cls_score, f"{type(self).__name__}.loss")
        return {"loss": self.criterion(score, labels), "acc": accuracy(score, labels)}


# Channels of ResNet outputs 0 (stem) .. 4 (stage 4), per depth family.
_BASIC = [64, 64, 128, 256, 512]
_BOTTLENECK = [64, 256, 512, 1024, 2048]
FEAT_CHANNELS = {
    "resnet18": _BASIC, "resnet34": _BASIC,
    "resnet50": _BOTTLENECK, "resnet101": _BOTTLENECK, "resnet152": _BOTTLENECK,
}
# 'adaptive' pooling: output side per stage (about 9000 features per stage for ResNet-50).
POOL_SIZES = [12, 6, 4, 3, 2]
# 'specified' pooling: fixed AvgPool2d per stage; for 224px inputs this also gives 12/6/4/3/2.
POOL_PARAMS = [
    {"kernel_size": 10, "stride": 10, "padding": 4},
    {"kernel_size": 16, "stride": 8, "padding": 0},
    {"kernel_size": 13, "stride": 5, "padding": 0},
    {"kernel_size": 8, "stride": 3, "padding": 0},
    {"kernel_size": 6, "stride": 1, "padding": 0},
]
LAST_UNPOOL_SIZE = 7 * 7  # stage-4 map of a 224px input


class MultiPooling(nn.Module):
    """Average-pools each selected stage's map to its ``POOL_SIZES`` side (``pool_type``
    ``"adaptive"``) or with the fixed ``POOL_PARAMS`` (``"specified"``, for 224px inputs)."""

    def __init__(self, pool_type: str = "adaptive", in_indices: Sequence[int] = (0,)) -> None:
        super().__init__()
        if pool_type == "adaptive":
            self.pools = nn.ModuleList([nn.AdaptiveAvgPool2d(POOL_SIZES[i]) for i in in_indices])
        elif pool_type == "specified":
            self.pools = nn.ModuleList([nn.AvgPool2d(**POOL_PARAMS[i]) for i in in_indices])
        else:
            raise ValueError(f"MultiClsHead: pool_type must be 'adaptive' or 'specified', got {pool_type!r}")

    def forward(self, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [pool(feat) for pool, feat in zip(self.pools, x)]


class MultiClsHead(BaseModule):
    """Linear classifiers on several ResNet stages (the linear-evaluation protocol of
    "Scaling and Benchmarking Self-Supervised Visual Representation Learning").

    Each selected stage's map is average-pooled to about 9000 features, normalised, flattened
    and classified by its own linear layer.

    Args:
        pool_type: ``"adaptive"`` (pool to 12/6/4/3/2 per side for outputs 0..4) or
            ``"specified"`` (fixed kernels that give those sizes for 224px inputs).
        in_indices: which ResNet outputs (0 = stem, 1..4 = stages) the head receives, in
            the order of the backbone's tuple (the backbone's ``out_indices`` must match).
        with_last_layer_unpool: add a classifier on the un-pooled last map (``C x 7 x 7``,
            224px inputs).
        backbone: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or
            ``"resnet152"``, for the stage widths.
        norm_cfg: normalisation of each pooled map (``BN``, ``SyncBN``, ``GN``), or
            ``{type = "null"}`` for none.
        num_classes: number of classes.
        init_cfg: initialisation on top of the default (weights N(0, 0.01), bias 0).

    ``forward(feats) -> [scores (N, num_classes)] * len(in_indices) (+1)``;
    ``loss(scores, labels) -> {"loss.{i+1}": ..., "acc.{i+1}": ...}`` for each index ``i``
    (and ``"loss.unpool"``/``"acc.unpool"`` for the un-pooled classifier).
    """

    def __init__(
        self,
        pool_type: str = "adaptive",
        in_indices: Sequence[int] = (0,),
        with_last_layer_unpool: bool = False,
        backbone: str = "resnet50",
        norm_cfg: Union[dict, None] = {"type": "BN"},  # noqa: B006 - never mutated
        num_classes: int = 1000,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        if backbone not in FEAT_CHANNELS:
            raise ValueError(f"MultiClsHead: backbone must be one of {', '.join(FEAT_CHANNELS)}, got {backbone!r}")
        bad = [i for i in in_indices if not 0 <= int(i) <= 4]
        if bad or not in_indices:
            raise ValueError(f"MultiClsHead: in_indices must be ResNet outputs 0..4, got {list(in_indices)}")
        norm_type = None if norm_cfg is None else norm_cfg.get("type")
        self.with_norm = norm_type not in (None, "null", "Identity")
        self.in_indices = [int(i) for i in in_indices]
        self.with_last_layer_unpool = with_last_layer_unpool
        self.criterion: nn.Module = nn.CrossEntropyLoss()
        channels = FEAT_CHANNELS[backbone]
        self.multi_pooling = MultiPooling(pool_type, self.in_indices)
        if self.with_norm:
            self.norms = nn.ModuleList([build_norm_layer(norm_cfg, channels[i], dim=2) for i in self.in_indices])
        self.fcs = nn.ModuleList(
            [nn.Linear(channels[i] * POOL_SIZES[i] ** 2, num_classes) for i in self.in_indices]
        )
        if with_last_layer_unpool:
            self.fcs.append(nn.Linear(channels[4] * LAST_UNPOOL_SIZE, num_classes))
        self.init_weights()

    def default_init(self) -> None:
        _linear_default_init(self)

    def forward(self, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not isinstance(x, (list, tuple)) or len(x) != len(self.in_indices):
            got = len(x) if isinstance(x, (list, tuple)) else type(x).__name__
            raise ValueError(
                f"MultiClsHead expects {len(self.in_indices)} feature maps (in_indices {self.in_indices}), got {got}"
            )
        feats = self.multi_pooling(x)
        if self.with_norm:
            feats = [norm(feat) for norm, feat in zip(self.norms, feats)]
        if self.with_last_layer_unpool:
            feats.append(x[-1])
        return [fc(feat.reshape(feat.size(0), -1)) for fc, feat in zip(self.fcs, feats)]

    def loss(self, cls_score: Sequence[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        names = [str(i + 1) for i in self.in_indices] + (["unpool"] if self.with_last_layer_unpool else [])
        losses: dict[str, torch.Tensor] = {}
        for name, score in zip(names, cls_score):
            losses[f"loss.{name}"] = self.criterion(score, labels)
            losses[f"acc.{name}"] = accuracy(score, labels)
        return losses
