"""Necks: the projectors between a backbone and a head (MMSelfSup 0.x names and arguments).

Every neck takes the backbone's output, a tuple/list with one feature map per ``out_indices``
(``x[0]`` is used; a bare tensor is accepted too), and returns a list of tensors, e.g.
``NonLinearNeck.forward((feat,)) -> [z]``. Sub-module names equal MMSelfSup 0.x's (``fc0``,
``bn0``, ``mlp`` ...), so their state-dict keys match.

Conventions shared by the necks below:

- ``with_avg_pool=True`` global-average-pools a ``(N, C, H, W)`` map to ``(N, C)``; an input
  that is already ``(N, C)`` is used as is.
- ``norm_cfg`` builds the 1-d normalisation layers (``BN`` becomes ``BatchNorm1d`` here).
  ``SyncBN`` (the default of several necks, as in MMSelfSup) needs a process group at run
  time; the trainer replaces it by plain batch norm when the run is not distributed, and so
  can :func:`selfsup_models.norm.revert_sync_batchnorm`.
- ``init_cfg`` is applied at the end of the constructor, after the neck's own defaults.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from .init import BaseModule
from .norm import build_norm_layer

__all__ = [
    "AvgPool2dNeck",
    "DenseCLNeck",
    "LinearNeck",
    "MoCoV2Neck",
    "NonLinearNeck",
    "ODCNeck",
    "RelativeLocNeck",
    "SwAVNeck",
]

InitCfg = Union[dict, list[dict], None]
Features = Union[torch.Tensor, Sequence[torch.Tensor]]


def single_feature(x: Any, owner: str) -> torch.Tensor:
    """The one feature map of a backbone output ``x`` (a tuple/list of length 1, or a tensor).

    Raises ``ValueError`` naming ``owner`` when ``x`` holds several feature maps.
    """
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ValueError(
                f"{owner} takes one feature map (a backbone with one out_indices entry), got {len(x)}; "
                "set the backbone's out_indices to a single stage"
            )
        return x[0]
    raise ValueError(f"{owner} expects a tuple/list of feature tensors, got {type(x).__name__}")


def vit_cls_token(x: Any) -> torch.Tensor:
    """The class token of one ViT output.

    MMSelfSup's ViT returns ``[patch_tokens, cls_token]`` per stage: the last item is taken.
    A token tensor ``(N, L, C)`` gives its first token; ``(N, C)`` is returned as is.
    """
    if isinstance(x, (list, tuple)):
        x = x[-1]
    if x.dim() == 3:
        return x[:, 0]
    return x


def pool_flatten(x: torch.Tensor, with_avg_pool: bool) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, C)`` by global average pooling when asked, then ``(N, -1)``."""
    if with_avg_pool and x.dim() == 4:
        x = F.adaptive_avg_pool2d(x, 1)
    return x.reshape(x.size(0), -1)


def _neck_input(neck: nn.Module, x: Any, vit_backbone: bool = False) -> torch.Tensor:
    """The ``(N, D)`` input of ``neck``'s projector: the single feature map of ``x``
    (:func:`single_feature`), its class token when ``vit_backbone``, then
    :func:`pool_flatten` with ``neck.with_avg_pool``."""
    feat = single_feature(x, type(neck).__name__)
    if vit_backbone:
        feat = vit_cls_token(feat)
    return pool_flatten(feat, neck.with_avg_pool)


def _mlp(in_channels: int, hid_channels: int, out_channels: int, *, with_norm: bool = False,
         norm_cfg: Mapping[str, Any] | None = None, conv1x1: bool = False) -> nn.Sequential:
    """``layer -> [norm] -> relu -> layer`` as an ``nn.Sequential`` (MMSelfSup's indices
    ``0``, ``1``, ... in that order). The layers are ``nn.Linear``, or 1x1 ``nn.Conv2d`` when
    ``conv1x1``. With ``with_norm`` a 1-d norm built from ``norm_cfg`` follows the first layer
    (``nn.Identity`` when ``norm_cfg`` is ``None``, so the indices stay the same)."""
    def layer(c_in: int, c_out: int) -> nn.Module:
        return nn.Conv2d(c_in, c_out, 1) if conv1x1 else nn.Linear(c_in, c_out)

    first = [layer(in_channels, hid_channels)]
    if with_norm:
        first.append(build_norm_layer(norm_cfg, hid_channels, dim=1))
    return nn.Sequential(*first, nn.ReLU(inplace=True), layer(hid_channels, out_channels))


def _norm_with(norm_cfg: Mapping[str, Any] | None, **extra: Any) -> dict[str, Any] | None:
    """``norm_cfg`` with ``extra`` options merged in (``affine`` becomes LN's
    ``elementwise_affine``; options a type does not take are dropped)."""
    if norm_cfg is None:
        return None
    cfg = dict(norm_cfg)
    norm_type = cfg.get("type")
    for key, value in extra.items():
        if norm_type == "LN" and key == "affine":
            cfg["elementwise_affine"] = value
        elif norm_type in ("LN", "GN", "Identity", None) and key == "momentum":
            continue
        elif norm_type in ("Identity", None):
            continue
        else:
            cfg[key] = value
    return cfg


class LinearNeck(BaseModule):
    """Linear projection: ``[avgpool] -> fc``.

    Args:
        in_channels: channels ``C`` of the backbone feature.
        out_channels: output dimension.
        with_avg_pool: global-average-pool a ``(N, C, H, W)`` input first.
        init_cfg: initialisation on top of PyTorch's default.

    ``forward(x) -> [Tensor (N, out_channels)]``.
    """

    def __init__(self, in_channels: int, out_channels: int, with_avg_pool: bool = True,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.fc = nn.Linear(in_channels, out_channels)
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = _neck_input(self, x)
        return [self.fc(feat)]


class NonLinearNeck(BaseModule):
    """The MLP projector of SimCLR, BYOL, SimSiam, Barlow Twins and MoCo v3.

    Layers: ``fc0 -> bn0``, then for ``i = 1 .. num_layers-1``: ``relu -> fc{i} -> bn{i}``.
    ``fc0`` maps ``in_channels -> hid_channels``; hidden layers keep ``hid_channels``; the last
    ``fc{num_layers-1}`` maps to ``out_channels``. (With ``num_layers=1`` only ``fc0 -> bn0``
    exists and the output has ``hid_channels`` features, as in MMSelfSup.)

    Args:
        in_channels, hid_channels, out_channels: layer widths.
        num_layers: number of linear layers (>= 1).
        with_bias: bias in every linear layer but the last.
        with_last_bn: normalisation after the last linear layer.
        with_last_bn_affine: learnable scale/shift in that last normalisation (MoCo v3 and
            SimSiam use ``false``).
        with_last_bias: bias in the last linear layer.
        with_avg_pool: global-average-pool a ``(N, C, H, W)`` input first.
        vit_backbone: the input is a ViT output; its class token is projected
            (see :func:`vit_cls_token`).
        norm_cfg: normalisation of every ``bn{i}`` (default ``{type = "SyncBN"}``).
        init_cfg: initialisation on top of the defaults (PyTorch's; norm weights 1, biases 0).

    ``forward(x) -> [Tensor (N, out_channels)]``.
    """

    def __init__(
        self,
        in_channels: int,
        hid_channels: int,
        out_channels: int,
        num_layers: int = 2,
        with_bias: bool = False,
        with_last_bn: bool = True,
        with_last_bn_affine: bool = True,
        with_last_bias: bool = False,
        with_avg_pool: bool = True,
        vit_backbone: bool = False,
        norm_cfg: Union[dict, None] = {"type": "SyncBN"},  # noqa: B006 - never mutated
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        if num_layers < 1:
            raise ValueError(f"NonLinearNeck: num_layers must be >= 1, got {num_layers}")
        self.with_avg_pool = with_avg_pool
        self.vit_backbone = vit_backbone
        self.num_layers = num_layers
        self.relu = nn.ReLU(inplace=True)
        self.fc0 = nn.Linear(in_channels, hid_channels, bias=with_bias)
        self.bn0 = build_norm_layer(norm_cfg, hid_channels, dim=1)
        self.fc_names: list[str] = []
        self.bn_names: list[str | None] = []
        for i in range(1, num_layers):
            last = i == num_layers - 1
            width = out_channels if last else hid_channels
            self.add_module(f"fc{i}", nn.Linear(hid_channels, width, bias=with_last_bias if last else with_bias))
            self.fc_names.append(f"fc{i}")
            if last and not with_last_bn:
                self.bn_names.append(None)
                continue
            cfg = _norm_with(norm_cfg, affine=False) if last and not with_last_bn_affine else norm_cfg
            self.add_module(f"bn{i}", build_norm_layer(cfg, width, dim=1))
            self.bn_names.append(f"bn{i}")
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = self.bn0(self.fc0(_neck_input(self, x, self.vit_backbone)))
        for fc_name, bn_name in zip(self.fc_names, self.bn_names):
            feat = getattr(self, fc_name)(self.relu(feat))
            if bn_name is not None:
                feat = getattr(self, bn_name)(feat)
        return [feat]


class MoCoV2Neck(BaseModule):
    """The MoCo v2 projector: ``[avgpool] -> fc -> relu -> fc`` (module ``mlp``).

    Args:
        in_channels, hid_channels, out_channels: layer widths.
        with_avg_pool: global-average-pool a ``(N, C, H, W)`` input first.
        init_cfg: initialisation on top of PyTorch's default.

    ``forward(x) -> [Tensor (N, out_channels)]``.
    """

    def __init__(self, in_channels: int, hid_channels: int, out_channels: int, with_avg_pool: bool = True,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.mlp = _mlp(in_channels, hid_channels, out_channels)
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = _neck_input(self, x)
        return [self.mlp(feat)]


class ODCNeck(BaseModule):
    """The ODC / DeepCluster-style neck: ``[avgpool] -> fc0 -> bn0 -> relu -> dropout -> fc1 -> relu``.

    ``bn0`` is built from ``norm_cfg`` with ``momentum=0.001`` and ``affine=False``, as in
    MMSelfSup. Dropout has p=0.5.

    Args:
        in_channels, hid_channels, out_channels: layer widths.
        with_avg_pool: global-average-pool a ``(N, C, H, W)`` input first.
        norm_cfg: normalisation of ``bn0`` (default ``{type = "SyncBN"}``).
        init_cfg: initialisation on top of PyTorch's default.

    ``forward(x) -> [Tensor (N, out_channels)]`` (non-negative).
    """

    def __init__(
        self,
        in_channels: int,
        hid_channels: int,
        out_channels: int,
        with_avg_pool: bool = True,
        norm_cfg: Union[dict, None] = {"type": "SyncBN"},  # noqa: B006 - never mutated
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.fc0 = nn.Linear(in_channels, hid_channels)
        self.bn0 = build_norm_layer(_norm_with(norm_cfg, momentum=0.001, affine=False), hid_channels, dim=1)
        self.fc1 = nn.Linear(hid_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout()
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = _neck_input(self, x)
        feat = self.drop(self.relu(self.bn0(self.fc0(feat))))
        return [self.relu(self.fc1(feat))]


class RelativeLocNeck(BaseModule):
    """The relative-location neck: ``[avgpool] -> fc -> bn -> relu -> dropout``.

    The algorithm concatenates the features of the two patches along channels first, so
    ``fc`` maps ``2 * in_channels -> out_channels``. ``bn`` is built from ``norm_cfg`` with
    ``momentum=0.003``; ``fc`` starts from N(0, 0.01) weights and zero bias.

    Args:
        in_channels: channels of one patch's feature.
        out_channels: output dimension.
        with_avg_pool: global-average-pool a ``(N, 2C, H, W)`` input first.
        norm_cfg: normalisation of ``bn`` (default ``{type = "BN1d"}``).
        init_cfg: initialisation on top of the defaults.

    ``forward(x) -> [Tensor (N, out_channels)]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        with_avg_pool: bool = True,
        norm_cfg: Union[dict, None] = {"type": "BN1d"},  # noqa: B006 - never mutated
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.fc = nn.Linear(in_channels * 2, out_channels)
        self.bn = build_norm_layer(_norm_with(norm_cfg, momentum=0.003), out_channels, dim=1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout()
        self.init_weights()

    def default_init(self) -> None:
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = _neck_input(self, x)
        return [self.drop(self.relu(self.bn(self.fc(feat))))]


class AvgPool2dNeck(BaseModule):
    """Adaptive average pooling of the feature map (no parameters).

    Args:
        output_size: spatial size of the output (int or ``[h, w]``).

    ``forward(x) -> [Tensor (N, C, h, w)]`` (``(N, C, 1, 1)`` by default).
    """

    def __init__(self, output_size: Union[int, Sequence[int]] = 1, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        size = output_size if isinstance(output_size, int) else tuple(output_size)
        self.avgpool = nn.AdaptiveAvgPool2d(size)
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        return [self.avgpool(single_feature(x, type(self).__name__))]


class SwAVNeck(BaseModule):
    """The SwAV projector, over all crops of a multi-crop batch at once.

    The input is a list with one backbone output per resolution group (e.g. the two 224px
    crops stacked, then the six 96px crops stacked): each item is a tuple/list whose first
    feature is used (or a tensor). Each is pooled to ``(n_g, C)`` and the results are
    concatenated in order, then projected: ``fc -> bn -> relu -> fc`` (module
    ``projection_neck``), or one ``fc`` when ``hid_channels == 0``, or nothing when
    ``out_channels == 0``; finally L2-normalised when ``with_l2norm``.

    Args:
        in_channels, hid_channels, out_channels: layer widths (see above for 0).
        with_avg_pool: global-average-pool ``(n, C, H, W)`` inputs first.
        with_l2norm: L2-normalise the output rows.
        norm_cfg: normalisation after the first layer (default ``{type = "SyncBN"}``).
        init_cfg: initialisation on top of the defaults.

    ``forward(x) -> [Tensor (sum of n_g, out_channels)]``.
    """

    #: 0 is a width with a meaning here (no hidden layer / no projection), not a mistake
    __selfsup_zero_ok__ = ("hid_channels", "out_channels")

    def __init__(
        self,
        in_channels: int,
        hid_channels: int,
        out_channels: int,
        with_avg_pool: bool = True,
        with_l2norm: bool = True,
        norm_cfg: Union[dict, None] = {"type": "SyncBN"},  # noqa: B006 - never mutated
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg)
        self.with_avg_pool = with_avg_pool
        self.with_l2norm = with_l2norm
        self.projection_neck: nn.Module | None
        if out_channels == 0:
            self.projection_neck = None
        elif hid_channels == 0:
            self.projection_neck = nn.Linear(in_channels, out_channels)
        else:
            self.projection_neck = _mlp(in_channels, hid_channels, out_channels, with_norm=True, norm_cfg=norm_cfg)
        self.init_weights()

    def adapt_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Fit a MMSelfSup 0.x SwAV checkpoint (in place, also returned; called by the
        ``Pretrained`` loader with this neck's key ``prefix``): 0.x registers the projector's
        norm twice, as ``bn`` and as ``projection_neck.1``, so its state dict holds every norm
        tensor under both names; the ``bn.*`` copies are dropped (moved to
        ``projection_neck.1.*`` when that copy is absent)."""
        alias = prefix + "bn."
        for key in [k for k in state if k.startswith(alias)]:
            target = prefix + "projection_neck.1." + key[len(alias):]
            value = state.pop(key)
            if target not in state and isinstance(self.projection_neck, nn.Sequential):
                state[target] = value
        return state

    def forward_projection(self, feat: torch.Tensor) -> torch.Tensor:
        """Project ``(n, in_channels)`` vectors (and L2-normalise them when configured)."""
        if self.projection_neck is not None:
            feat = self.projection_neck(feat)
        if self.with_l2norm:
            feat = F.normalize(feat, dim=1, p=2)
        return feat

    def forward(self, x: Sequence[Any]) -> list[torch.Tensor]:
        if isinstance(x, torch.Tensor):
            x = [x]
        pooled = []
        for group in x:
            feat = group if isinstance(group, torch.Tensor) else single_feature(group, type(self).__name__)
            pooled.append(pool_flatten(feat, self.with_avg_pool))
        return [self.forward_projection(torch.cat(pooled, dim=0))]


class DenseCLNeck(BaseModule):
    """The DenseCL neck: a global projector and a dense (1x1 conv) projector.

    - global: ``avgpool -> fc -> relu -> fc`` (module ``mlp``) -> ``(N, out_channels)``
    - dense: ``[adaptive pool to num_grid x num_grid] -> conv1x1 -> relu -> conv1x1``
      (module ``mlp2``) -> ``(N, out_channels, S)`` with ``S = H*W`` (or ``num_grid**2``)
    - the dense output average-pooled -> ``(N, out_channels)``

    Args:
        in_channels, hid_channels, out_channels: layer widths.
        num_grid: pool the map to ``num_grid x num_grid`` before the dense projector;
            ``None`` keeps the backbone's resolution.
        init_cfg: initialisation on top of PyTorch's default.

    ``forward(x) -> [global (N, out), dense (N, out, S), pooled dense (N, out)]``.
    """

    def __init__(self, in_channels: int, hid_channels: int, out_channels: int, num_grid: Union[int, None] = None,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        self.mlp = _mlp(in_channels, hid_channels, out_channels)
        self.with_pool = num_grid is not None
        self.pool = nn.AdaptiveAvgPool2d((num_grid, num_grid)) if num_grid is not None else None
        self.mlp2 = _mlp(in_channels, hid_channels, out_channels, conv1x1=True)
        self.init_weights()

    def forward(self, x: Features) -> list[torch.Tensor]:
        feat = single_feature(x, type(self).__name__)
        if feat.dim() != 4:
            raise ValueError(f"DenseCLNeck expects a (N, C, H, W) feature map, got shape {tuple(feat.shape)}")
        global_out = self.mlp(pool_flatten(feat, True))
        if self.pool is not None:
            feat = self.pool(feat)
        dense = self.mlp2(feat)
        pooled_dense = dense.mean(dim=(2, 3))
        return [global_out, dense.flatten(2), pooled_dense]
