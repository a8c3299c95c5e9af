"""Swin Transformer backbone (compact implementation) for SimMIM.

Windows of ``window_size`` tokens attend within themselves with a learned relative-position
bias; every second block shifts the windows by half a window (with the attention mask that
keeps rolled-in regions apart). Stage ``i`` (0-based) has ``embed_dims * 2**i`` channels at
``1 / (patch_size * 2**i)`` of the input resolution; a patch-merging layer ends stages 0..2.

Module names follow the Swin / SimMIM releases (``patch_embed.proj``, ``patch_embed.norm``,
``layers.i.blocks.j.attn.relative_position_bias_table``, ``layers.i.downsample.reduction``,
``mask_token``, ``absolute_pos_embed``); each returned stage has its own output norm
``norm{i}`` (a checkpoint's final ``norm`` is loaded into ``norm3``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ..init import BaseModule
from ..norm import build_norm_layer
from ._freezing import FrozenStagesMixin
from .transformer_layers import (
    DropPath,
    Mlp,
    MultiheadAttention,
    mask_to_token_weights,
    register_state_dict_adapter,
    resize_pos_embed,
)

__all__ = ["SwinTransformer", "SimMIMSwinTransformer", "SWIN_ARCHS"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]

_ARCH_KEYS = ("embed_dims", "depths", "num_heads")
SWIN_ARCHS: dict[str, dict[str, Any]] = {
    "tiny": dict(embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dims=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dims=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "large": dict(embed_dims=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
_ALIASES = {"t": "tiny", "s": "small", "b": "base", "l": "large"}


def _resolve_arch(arch: str | Mapping[str, Any], owner: str) -> dict[str, Any]:
    if isinstance(arch, str):
        key = _ALIASES.get(arch.lower(), arch.lower())
        if key not in SWIN_ARCHS:
            raise ValueError(
                f"{owner}: unknown arch {arch!r}; known: {', '.join(SWIN_ARCHS)} or a table with {', '.join(_ARCH_KEYS)}"
            )
        return dict(SWIN_ARCHS[key])
    arch = dict(arch)
    if sorted(arch) != sorted(_ARCH_KEYS):
        raise ValueError(f"{owner}: an arch table needs exactly {', '.join(_ARCH_KEYS)}, got {', '.join(arch)}")
    if len(arch["depths"]) != len(arch["num_heads"]):
        raise ValueError(f"{owner}: arch depths and num_heads need the same length")
    return {"embed_dims": int(arch["embed_dims"]), "depths": tuple(arch["depths"]), "num_heads": tuple(arch["num_heads"])}


class WindowAttention(MultiheadAttention):
    """Multi-head attention inside ``window_size x window_size`` windows with a relative-position bias.

    ``(B * nW, w*w, C) -> (B * nW, w*w, C)``; ``mask`` ``(nW, w*w, w*w)`` is added (0 / -inf
    style, here -100) to the logits of each window.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index, persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        bw, n, _ = x.shape
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)  # (1, heads, n, n)
        if mask is not None:
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask[None, :, None]).expand(bw // nw, -1, -1, -1, -1)
            bias = bias.reshape(bw, self.num_heads, n, n)
        return super().forward(x, bias)


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def _shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """``(nW, ws*ws, ws*ws)``: 0 inside a region, -100 between regions the roll brought together."""
    img = torch.zeros(1, h, w, 1, device=device)
    region = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = region
            region += 1
    windows = _window_partition(img, ws).squeeze(-1)
    diff = windows[:, None, :] - windows[:, :, None]
    return diff.ne(0).float() * -100.0


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block: ``(B, H*W, C) -> (B, H*W, C)``."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: bool, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: float,
                 norm_cfg: Mapping[str, Any] | None) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = build_norm_layer(norm_cfg, dim, dim=1)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = build_norm_layer(norm_cfg, dim, dim=1)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        ws = self.window_size
        shift = ws // 2 if self.shift and min(h, w) > ws else 0
        y = self.norm1(x).view(b, h, w, c)
        pad_h, pad_w = (-h) % ws, (-w) % ws
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        mask = None
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
            mask = _shift_mask(hp, wp, ws, shift, y.device)
        y = self.attn(_window_partition(y, ws), mask)
        y = _window_reverse(y, ws, hp, wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :h, :w].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbouring tokens -> one: ``(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)``."""

    def __init__(self, dim: int, norm_cfg: Mapping[str, Any] | None) -> None:
        super().__init__()
        self.norm = build_norm_layer(norm_cfg, 4 * dim, dim=1)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = hw
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        new_hw = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c))), new_hw


class SwinStage(nn.Module):
    """``depth`` blocks (alternating plain / shifted windows), then an optional patch merging."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None, with_cp: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = cp.checkpoint(block, x, hw, use_reentrant=False)
            else:
                x = block(x, hw)
        return x


class _SwinPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch_size: int, norm: nn.Module) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {self.patch_size}")
        x = self.proj(x)
        hw = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class SwinTransformer(FrozenStagesMixin, BaseModule):
    """Swin Transformer.

    Args:
        arch: ``"tiny"``, ``"small"``, ``"base"``, ``"large"`` (or ``t/s/b/l``) or a table
            ``{embed_dims, depths, num_heads}``.
        img_size: pre-training image size (192 as SimMIM); only the absolute position
            embedding depends on it (interpolated for other sizes).
        patch_size: patch side in pixels (4).
        in_channels: input image channels.
        window_size: attention window side in tokens (6 for SimMIM at 192 px; 7 at 224 px).
            Maps no larger than a window are not shifted; others are padded to whole windows.
        mlp_ratio: MLP hidden size / embedding size.
        qkv_bias: bias in the qkv projections.
        drop_rate, attn_drop_rate: dropout rates; drop_path_rate: stochastic depth (max, linear).
        out_indices: stages returned (0-based), each as ``(N, C_i, H_i, W_i)`` after its own norm.
        use_abs_pos_embed: add a learned absolute position embedding after the patch embedding.
        patch_norm: LayerNorm after the patch embedding.
        norm_cfg: norm of every block and output (``{type = "LN"}``).
        frozen_stages: ``-1`` none; ``0`` the patch embedding (and position embedding, mask
            token); ``k`` also stages ``0..k-1``: ``requires_grad=False`` and eval mode.
        use_mask_token: learnable ``mask_token`` for ``forward(x, mask)`` (SimMIM).
        with_cp: gradient checkpointing per block.
        init_cfg: applied after the default init (trunc-normal(0.02) linears, bias tables,
            tokens; LN 1/0).

    ``out_channels`` = channels of the last output; ``feature_channels`` per output.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "tiny",
        img_size: int | Sequence[int] = 192,
        patch_size: int = 4,
        in_channels: int = 3,
        window_size: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        out_indices: int | Sequence[int] = (3,),
        use_abs_pos_embed: bool = False,
        patch_norm: bool = True,
        norm_cfg: Mapping[str, Any] | None = {"type": "LN"},  # noqa: B006 - never mutated
        frozen_stages: int = -1,
        use_mask_token: bool = False,
        with_cp: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        settings = _resolve_arch(arch, name)
        depths, heads = settings["depths"], settings["num_heads"]
        self.num_stages = len(depths)
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"{name}: img_size {self.img_size} is not divisible by patch_size {patch_size}")
        if window_size < 1:
            raise ValueError(f"{name}: window_size must be >= 1, got {window_size}")
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        out_indices = tuple(i + self.num_stages if i < 0 else i for i in out_indices)
        if not out_indices or any(not 0 <= i < self.num_stages for i in out_indices):
            raise ValueError(f"{name}: out_indices must be in 0..{self.num_stages - 1}, got {out_indices}")
        if not -1 <= frozen_stages <= self.num_stages:
            raise ValueError(f"{name}: frozen_stages must be -1..{self.num_stages}, got {frozen_stages}")
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.window_size = window_size
        self.patch_resolution = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        embed = settings["embed_dims"]
        self.embed_dims = embed
        channels = [embed * 2**i for i in range(self.num_stages)]
        for c, h in zip(channels, heads):
            if c % h:
                raise ValueError(f"{name}: stage channels {c} are not divisible by {h} heads")

        patch_norm_layer = build_norm_layer(norm_cfg, embed, dim=1) if patch_norm else nn.Identity()
        self.patch_embed = _SwinPatchEmbed(in_channels, embed, patch_size, patch_norm_layer)
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed)) if use_abs_pos_embed else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed)) if use_mask_token else None
        self.drop_after_pos = nn.Dropout(drop_rate)

        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        start = 0
        for i, (depth, num_heads) in enumerate(zip(depths, heads)):
            blocks = [
                SwinBlock(channels[i], num_heads, window_size, shift=j % 2 == 1, mlp_ratio=mlp_ratio,
                          qkv_bias=qkv_bias, drop=drop_rate, attn_drop=attn_drop_rate,
                          drop_path=rates[start + j], norm_cfg=norm_cfg)
                for j in range(depth)
            ]
            start += depth
            downsample = PatchMerging(channels[i], norm_cfg) if i < self.num_stages - 1 else None
            self.layers.append(SwinStage(blocks, downsample, with_cp))
        for i in out_indices:
            self.add_module(f"norm{i}", build_norm_layer(norm_cfg, channels[i], dim=1))
        self.feature_channels = tuple(channels[i] for i in out_indices)
        self.out_channels = self.feature_channels[-1]
        register_state_dict_adapter(self)
        self.init_weights()
        self._freeze_stages()

    def default_init(self) -> None:
        """Trunc-normal(0.02) linears (bias 0), bias tables and tokens; LayerNorm 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowAttention):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)
        for param in (self.absolute_pos_embed, self.mask_token):
            if param is not None:
                nn.init.trunc_normal_(param, std=0.02)

    def adapt_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Fit a checkpoint (in place, also returned): final ``norm`` -> ``norm{last}``, drop
        ``relative_position_index``/``attn_mask`` buffers, resize ``absolute_pos_embed``."""
        last = self.num_stages - 1
        if hasattr(self, f"norm{last}"):
            for suffix in ("weight", "bias"):
                key = f"{prefix}norm.{suffix}"
                if key in state and f"{prefix}norm{last}.{suffix}" not in state:
                    state[f"{prefix}norm{last}.{suffix}"] = state.pop(key)
        for key in [k for k in state if k.startswith(prefix)]:
            if key.endswith(".relative_position_index") or key.endswith(".attn_mask"):
                del state[key]
        key = prefix + "absolute_pos_embed"
        if self.absolute_pos_embed is not None and key in state:
            pos = state[key]
            if pos.dim() == 3 and pos.shape[1] != self.absolute_pos_embed.shape[1]:
                side = int(pos.shape[1] ** 0.5)
                if side * side == pos.shape[1]:
                    state[key] = resize_pos_embed(pos, (side, side), self.patch_resolution, "bicubic", 0)
        return state

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.patch_embed, self.drop_after_pos]
        for i in range(self.frozen_stages):
            modules.append(self.layers[i])
            if hasattr(self, f"norm{i}"):
                modules.append(getattr(self, f"norm{i}"))
        return modules

    def _frozen_parameters(self) -> list[nn.Parameter | None]:
        return [self.absolute_pos_embed, self.mask_token]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(N, C_in, H, W)`` -> tuple of ``(N, C_i, H_i, W_i)``, one per ``out_indices``.

        ``mask`` (needs ``use_mask_token``): ``(N, Hp, Wp)`` at the patch grid, ``(N, Hp*Wp)``
        or a coarser grid dividing it (SimMIM's 32 px mask patches); 1 = masked.
        """
        x, hw = self.patch_embed(x)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError(f"{type(self).__name__}: forward(x, mask) needs use_mask_token=true")
            w = mask_to_token_weights(mask, hw, x)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        if self.absolute_pos_embed is not None:
            x = x + resize_pos_embed(self.absolute_pos_embed, self.patch_resolution, hw, "bicubic", 0)
        x = self.drop_after_pos(x)
        outs: dict[int, torch.Tensor] = {}
        for i, stage in enumerate(self.layers[: max(self.out_indices) + 1]):
            x = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(x)
                outs[i] = out.view(x.shape[0], hw[0], hw[1], -1).permute(0, 3, 1, 2).contiguous()
            if stage.downsample is not None and i < max(self.out_indices):
                x, hw = stage.downsample(x, hw)
        return tuple(outs[i] for i in self.out_indices)


class SimMIMSwinTransformer(SwinTransformer):
    """MMSelfSup's ``SimMIMSwinTransformer``: :class:`SwinTransformer` with the mask token on
    (``use_mask_token=True``); ``forward(x, mask)``. Same arguments otherwise."""

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "base",
        img_size: int | Sequence[int] = 192,
        patch_size: int = 4,
        in_channels: int = 3,
        window_size: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        out_indices: int | Sequence[int] = (3,),
        use_abs_pos_embed: bool = False,
        patch_norm: bool = True,
        norm_cfg: Mapping[str, Any] | None = {"type": "LN"},  # noqa: B006 - never mutated
        frozen_stages: int = -1,
        with_cp: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(
            arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            window_size=window_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate, out_indices=out_indices,
            use_abs_pos_embed=use_abs_pos_embed, patch_norm=patch_norm, norm_cfg=norm_cfg,
            frozen_stages=frozen_stages, use_mask_token=True, with_cp=with_cp, init_cfg=init_cfg,
        )
