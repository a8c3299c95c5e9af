"""ResNet, ResNetV1d and ResNeXt backbones (MMSelfSup 0.x names and arguments).

Built from torchvision's ``BasicBlock`` / ``Bottleneck`` with torchvision's module names
(``conv1``, ``bn1``, ``layer1`` ... ``layer4``, no ``fc``), so a torchvision ResNet state dict
loads into :class:`ResNet` as it is (only ``fc.*`` is unexpected) and ours loads into
torchvision's. ``ResNetV1d`` replaces ``conv1``/``bn1`` by a deep stem ``stem.0`` ... ``stem.8``
and its shortcuts are ``downsample.0`` (AvgPool2d), ``.1`` (conv), ``.2`` (norm), as in MMCV.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.utils.checkpoint as cp
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..init import BaseModule
from ..norm import build_norm_layer
from ._freezing import FrozenStagesMixin

__all__ = ["ResNet", "ResNetV1d", "ResNeXt", "BasicBlock", "Bottleneck"]

ARCH_SETTINGS: dict[int, tuple[type[Union[BasicBlock, Bottleneck]], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STEM_TYPES = ("imagenet", "cifar")

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


class ResNet(FrozenStagesMixin, BaseModule):
    """ResNet backbone.

    Args:
        depth: 18, 34, 50, 101 or 152.
        in_channels: input image channels (1 for Fashion-MNIST).
        stem_channels: output channels of the stem.
        base_channels: ``planes`` of stage 1 (doubled per stage); 64 as in the paper.
        num_stages: 1 to 4 residual stages.
        strides, dilations: per stage (first ``num_stages`` entries used); the stride goes
            on the 3x3 conv ("pytorch" style, torchvision's Bottleneck).
        out_indices: which outputs ``forward`` returns, in this order: ``0`` = stem output
            (after the max-pool), ``1`` ... ``num_stages`` = residual stages (MMSelfSup 0.x).
        stem_type: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool) or
            ``"cifar"`` for small images (32 px, 28 px): a 3x3 stride-1 conv and no max-pool,
            so stage 4 of a 32 px input is 4x4 instead of 1x1.
        deep_stem: three 3x3 convs (``stem_channels // 2``, ``// 2``, ``stem_channels``) instead
            of the 7x7 conv (ResNet-C; module ``stem``).
        avg_down: shortcut downsampling by AvgPool2d + stride-1 1x1 conv (ResNet-D).
        frozen_stages: ``-1`` none; ``0`` the stem; ``k`` the stem and stages 1..k. Frozen
            parts get ``requires_grad=False`` and stay in eval mode through ``train()``.
        norm_cfg: ``norm_cfg`` of every norm layer (see :mod:`selfsup_models.norm`).
        norm_eval: keep every batch-norm layer in eval mode (frozen statistics) in training.
        with_cp: gradient checkpointing per residual block (less memory, more compute).
        zero_init_residual: zero the last norm weight of every residual block, so each
            block starts as the identity.
        init_cfg: applied after the default init (Kaiming fan_out for convs, 1/0 for norms).

    Input ``(N, in_channels, H, W)``; output: a tuple of ``(N, C_i, H_i, W_i)`` maps, one per
    ``out_indices``. ``out_channels`` is the channels of the last output,
    ``feature_channels`` those of every output.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: int | Sequence[int] = (4,),
        stem_type: str = "imagenet",
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: int = -1,
        norm_cfg: Mapping[str, Any] | None = {"type": "BN"},  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        self._build(
            depth, in_channels, stem_channels, base_channels, num_stages, strides, dilations,
            out_indices, stem_type, deep_stem, avg_down, frozen_stages, norm_cfg, norm_eval,
            with_cp, zero_init_residual, groups=1, width_per_group=64,
        )

    # ------------------------------------------------------------------ construction

    def _build(
        self,
        depth: int,
        in_channels: int,
        stem_channels: int,
        base_channels: int,
        num_stages: int,
        strides: Sequence[int],
        dilations: Sequence[int],
        out_indices: Sequence[int],
        stem_type: str,
        deep_stem: bool,
        avg_down: bool,
        frozen_stages: int,
        norm_cfg: Mapping[str, Any] | None,
        norm_eval: bool,
        with_cp: bool,
        zero_init_residual: bool,
        groups: int,
        width_per_group: int,
    ) -> None:
        name = type(self).__name__
        if depth not in self.arch_settings:
            allowed = ", ".join(map(str, self.arch_settings))
            raise ValueError(f"{name}: depth must be one of {allowed}, got {depth!r}")
        if not 1 <= num_stages <= 4:
            raise ValueError(f"{name}: num_stages must be 1 to 4, got {num_stages}")
        strides, dilations = tuple(strides), tuple(dilations)
        if len(strides) < num_stages or len(dilations) < num_stages:
            raise ValueError(f"{name}: strides and dilations need {num_stages} entries (num_stages)")
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i <= num_stages for i in out_indices):
            raise ValueError(
                f"{name}: out_indices must be in 0..{num_stages} (0 = stem, 1..{num_stages} = stages), got {out_indices}"
            )
        if stem_type not in STEM_TYPES:
            raise ValueError(f"{name}: stem_type must be one of {', '.join(STEM_TYPES)}, got {stem_type!r}")
        if stem_type == "cifar" and deep_stem:
            raise ValueError(f"{name}: stem_type='cifar' and deep_stem=true cannot be combined")
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"{name}: frozen_stages must be -1..{num_stages}, got {frozen_stages}")
        block, stage_blocks = self.arch_settings[depth]
        if block is BasicBlock and (groups != 1 or width_per_group != 64):
            raise ValueError(f"{name}: depth {depth} (BasicBlock) supports only groups=1, width_per_group=64")
        if block is BasicBlock and any(d != 1 for d in dilations[:num_stages]):
            raise ValueError(f"{name}: depth {depth} (BasicBlock) does not support dilations > 1")

        self.depth = depth
        self.num_stages = num_stages
        self.out_indices = out_indices
        self.stem_type = stem_type
        self.deep_stem = deep_stem
        self.avg_down = avg_down
        self.frozen_stages = frozen_stages
        self.norm_cfg = dict(norm_cfg) if norm_cfg is not None else None
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.groups = groups
        self.width_per_group = width_per_group
        build_norm_layer(self.norm_cfg, stem_channels)  # fail early on a bad norm_cfg

        def norm(channels: int) -> nn.Module:
            return build_norm_layer(self.norm_cfg, channels)

        # stem
        if deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False), norm(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, half, 3, stride=1, padding=1, bias=False), norm(half), nn.ReLU(inplace=True),
                nn.Conv2d(half, stem_channels, 3, stride=1, padding=1, bias=False), norm(stem_channels),
                nn.ReLU(inplace=True),
            )
        elif stem_type == "cifar":
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, stride=1, padding=1, bias=False)
            self.bn1 = norm(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
            self.bn1 = norm(stem_channels)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem_type == "cifar" else nn.MaxPool2d(3, stride=2, padding=1)

        # residual stages
        channels = [stem_channels]
        inplanes = stem_channels
        for i in range(num_stages):
            planes = base_channels * 2**i
            stride, dilation = strides[i], dilations[i]
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = self._make_downsample(inplanes, planes * block.expansion, stride, norm)
            blocks = [block(inplanes, planes, stride, downsample, groups, width_per_group, dilation, norm)]
            inplanes = planes * block.expansion
            for _ in range(1, stage_blocks[i]):
                blocks.append(
                    block(inplanes, planes, groups=groups, base_width=width_per_group, dilation=dilation,
                          norm_layer=norm)
                )
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            channels.append(inplanes)

        self.feature_channels = tuple(channels[i] for i in out_indices)
        self.out_channels = self.feature_channels[-1]
        self._freeze_stages()
        self.init_weights()

    def _make_downsample(self, inplanes: int, outplanes: int, stride: int, norm: Any) -> nn.Sequential:
        if self.avg_down and stride != 1:
            return nn.Sequential(
                nn.AvgPool2d(stride, stride=stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, outplanes, 1, stride=1, bias=False),
                norm(outplanes),
            )
        if self.avg_down:
            return nn.Sequential(nn.Identity(), nn.Conv2d(inplanes, outplanes, 1, bias=False), norm(outplanes))
        return nn.Sequential(nn.Conv2d(inplanes, outplanes, 1, stride=stride, bias=False), norm(outplanes))

    def default_init(self) -> None:
        """Kaiming-normal (fan_out, relu) convs, norm weight 1 / bias 0; optional zero-init residual."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else (
                    getattr(m, "bn2", None) if isinstance(m, BasicBlock) else None
                )
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    # ------------------------------------------------------------------ freezing / modes

    def stages(self) -> list[nn.Sequential]:
        """The residual stages ``layer1`` ... ``layer{num_stages}``."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    def _stem_modules(self) -> list[nn.Module]:
        if self.deep_stem:
            return [self.stem]
        return [self.conv1, self.bn1]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return self._stem_modules() + self.stages()[: self.frozen_stages]

    def train(self, mode: bool = True) -> ResNet:
        """Set train/eval mode; frozen stages (and every batch norm with ``norm_eval``) stay in eval."""
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------ forward

    def _stem_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        return self.maxpool(x)

    def _stage_forward(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if not (self.with_cp and self.training and torch.is_grad_enabled()):
            return stage(x)
        for block in stage:
            x = cp.checkpoint(block, x, use_reentrant=False)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(N, C, H, W)`` -> tuple of feature maps, one per ``out_indices`` (in that order)."""
        last = max(self.out_indices)
        feats: dict[int, torch.Tensor] = {}
        x = self._stem_forward(x)
        feats[0] = x
        for i, stage in enumerate(self.stages()[:last], start=1):
            x = self._stage_forward(stage, x)
            feats[i] = x
        return tuple(feats[i] for i in self.out_indices)


class ResNetV1d(ResNet):
    """ResNet-D (``ResNetV1d``): deep stem (three 3x3 convs) and average-pool shortcuts.

    Same arguments as :class:`ResNet`, with ``deep_stem`` and ``avg_down`` always on.
    """

    def __init__(
        self,
        depth: int,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: int | Sequence[int] = (4,),
        frozen_stages: int = -1,
        norm_cfg: Mapping[str, Any] | None = {"type": "BN"},  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        BaseModule.__init__(self, init_cfg=init_cfg)
        self._build(
            depth, in_channels, stem_channels, base_channels, num_stages, strides, dilations,
            out_indices, "imagenet", True, True, frozen_stages, norm_cfg, norm_eval, with_cp,
            zero_init_residual, groups=1, width_per_group=64,
        )


class ResNeXt(ResNet):
    """ResNeXt: Bottleneck blocks with grouped 3x3 convs (depth 50, 101, 152).

    Extra arguments: ``groups`` (cardinality, 32) and ``width_per_group`` (4): the 3x3 conv
    of stage ``i`` has ``groups * width_per_group * 2**i`` channels, as torchvision's
    ``resnext50_32x4d`` (whose state dict loads as it is). Other arguments as :class:`ResNet`.
    """

    arch_settings = {d: s for d, s in ARCH_SETTINGS.items() if s[0] is Bottleneck}

    def __init__(
        self,
        depth: int,
        groups: int = 32,
        width_per_group: int = 4,
        in_channels: int = 3,
        stem_channels: int = 64,
        base_channels: int = 64,
        num_stages: int = 4,
        strides: Sequence[int] = (1, 2, 2, 2),
        dilations: Sequence[int] = (1, 1, 1, 1),
        out_indices: int | Sequence[int] = (4,),
        stem_type: str = "imagenet",
        deep_stem: bool = False,
        avg_down: bool = False,
        frozen_stages: int = -1,
        norm_cfg: Mapping[str, Any] | None = {"type": "BN"},  # noqa: B006 - never mutated
        norm_eval: bool = False,
        with_cp: bool = False,
        zero_init_residual: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        BaseModule.__init__(self, init_cfg=init_cfg)
        if groups < 1 or width_per_group < 1:
            raise ValueError(f"ResNeXt: groups and width_per_group must be >= 1, got {groups}, {width_per_group}")
        self._build(
            depth, in_channels, stem_channels, base_channels, num_stages, strides, dilations,
            out_indices, stem_type, deep_stem, avg_down, frozen_stages, norm_cfg, norm_eval,
            with_cp, zero_init_residual, groups=groups, width_per_group=width_per_group,
        )
