"""Vision Transformer backbone (ViT) for MoCo v3, MAE, SimMIM and fine-tuning.

Output convention (MMSelfSup 0.x / mmcls): ``forward`` returns a tuple with one entry per
``out_indices``; each entry is ``[patch_map, cls_token]`` (a 2-item list: ``(N, C, Hp, Wp)``
and ``(N, C)``) when ``output_cls_token`` is true, else just ``patch_map``. MMSelfSup's
``NonLinearNeck(vit_backbone=True)`` takes ``x[0][-1]``, the cls token.

Masked image modelling:

- MAE: :meth:`VisionTransformer.forward_masked` runs the encoder on a random subset of the
  patches only and returns ``(latent, mask, ids_restore)``; :class:`MAEViT` is the MMSelfSup
  name whose ``forward`` does exactly that with its ``mask_ratio``.
- SimMIM: ``forward(x, mask)`` with ``use_mask_token=True`` replaces the embeddings of the
  masked patches (``mask == 1``) by a learnable ``mask_token`` before the encoder.

Checkpoints: module names are timm's (``patch_embed.proj``, ``blocks.i.norm1``,
``blocks.i.attn.qkv``, ``blocks.i.mlp.fc1``, ``norm``), as in the MAE and MoCo v3 releases;
mmcls/MMSelfSup names (``patch_embed.projection``, ``layers.i.ln1``, ``layers.i.ffn.layers.0.0``,
final ``ln1``) are converted on load, and a ``pos_embed`` of another grid size is resized.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from ..init import BaseModule
from ..norm import build_norm_layer
from ._freezing import FrozenStagesMixin
from .transformer_layers import (
    TransformerEncoderLayer,
    build_2d_sincos_position_embedding,
    mask_to_token_weights,
    register_state_dict_adapter,
    resize_pos_embed,
)

__all__ = ["VisionTransformer", "MAEViT", "PatchEmbed", "VIT_ARCHS"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]

_ARCH_KEYS = ("embed_dims", "num_layers", "num_heads", "feedforward_channels")
VIT_ARCHS: dict[str, dict[str, int]] = {
    "tiny": dict(embed_dims=192, num_layers=12, num_heads=3, feedforward_channels=768),
    "small": dict(embed_dims=384, num_layers=12, num_heads=6, feedforward_channels=1536),
    "mocov3-small": dict(embed_dims=384, num_layers=12, num_heads=12, feedforward_channels=1536),
    "base": dict(embed_dims=768, num_layers=12, num_heads=12, feedforward_channels=3072),
    "large": dict(embed_dims=1024, num_layers=24, num_heads=16, feedforward_channels=4096),
    "huge": dict(embed_dims=1280, num_layers=32, num_heads=16, feedforward_channels=5120),
}
_ARCH_ALIASES = {
    "t": "tiny", "deit-tiny": "tiny", "deit-t": "tiny",
    "s": "small", "deit-small": "small", "deit-s": "small",
    "b": "base", "deit-base": "base", "deit-b": "base",
    "l": "large", "h": "huge",
}
POS_EMBED_TYPES = ("learnable", "sincos")


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value!r}")
    return int(value[0]), int(value[1])


def resolve_arch(arch: str | Mapping[str, int], owner: str = "VisionTransformer") -> dict[str, int]:
    """``arch`` name or dict -> ``{embed_dims, num_layers, num_heads, feedforward_channels}``."""
    if isinstance(arch, str):
        key = _ARCH_ALIASES.get(arch.lower(), arch.lower())
        if key not in VIT_ARCHS:
            raise ValueError(
                f"{owner}: unknown arch {arch!r}; known: {', '.join(VIT_ARCHS)} or a table with "
                f"{', '.join(_ARCH_KEYS)}"
            )
        return dict(VIT_ARCHS[key])
    arch = dict(arch)
    missing = [k for k in _ARCH_KEYS if k not in arch]
    unknown = [k for k in arch if k not in _ARCH_KEYS]
    if missing or unknown:
        raise ValueError(
            f"{owner}: an arch table needs exactly {', '.join(_ARCH_KEYS)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    return {k: int(v) for k, v in arch.items()}


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> embeddings: ``(N, C_in, H, W) -> (N, C, H/p, W/p)`` (a conv ``proj``)."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {self.patch_size}")
        return self.proj(x)


_MMCLS_RULES = [
    (re.compile(r"^patch_embed\.projection\."), "patch_embed.proj."),
    (re.compile(r"^layers\.(\d+)\.ln1\."), r"blocks.\1.norm1."),
    (re.compile(r"^layers\.(\d+)\.ln2\."), r"blocks.\1.norm2."),
    (re.compile(r"^layers\.(\d+)\.attn\."), r"blocks.\1.attn."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.0\.0\."), r"blocks.\1.mlp.fc1."),
    (re.compile(r"^layers\.(\d+)\.ffn\.layers\.1\."), r"blocks.\1.mlp.fc2."),
    (re.compile(r"^ln1\."), "norm."),
]


class VisionTransformer(FrozenStagesMixin, BaseModule):
    """Vision Transformer (ViT).

    Args:
        arch: ``"tiny"``, ``"small"``, ``"base"``, ``"large"``, ``"huge"``, ``"mocov3-small"``
            (12 heads) or a table ``{embed_dims, num_layers, num_heads, feedforward_channels}``.
        img_size: training image size (int or ``[h, w]``); sets the position-embedding grid.
            Other input sizes work: the embedding is interpolated (``interpolate_mode``).
        patch_size: patch side in pixels.
        in_channels: input image channels.
        out_indices: block indices whose outputs are returned (``-1`` = last; an int or a list).
        drop_rate: dropout after the position embedding and in attention/MLP outputs.
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        qkv_bias: bias in the qkv projection.
        norm_cfg: norm of every block (``{type = "LN", eps = 1e-6}``).
        final_norm: apply the final norm (``norm``) to the last block's output.
        with_cls_token: prepend a learnable cls token.
        output_cls_token: return ``[patch_map, cls_token]`` per output (needs ``with_cls_token``).
        interpolate_mode: mode for resizing the position embedding.
        pos_embed_type: ``"learnable"`` or ``"sincos"`` (fixed 2-d sin-cos, MoCo v3 / MAE; not trained).
        stop_grad_conv1: freeze the patch projection (MoCo v3's stability trick).
        frozen_stages: ``-1`` none; ``0`` patch embedding, cls token and position embedding;
            ``k`` those and blocks ``0..k-1`` (and the final norm when ``k = num_layers``).
            Frozen parts get ``requires_grad=False`` and stay in eval mode.
        use_mask_token: create the learnable ``mask_token`` for ``forward(x, mask)`` (SimMIM).
        init_cfg: applied after the default init (xavier-uniform linears, trunc-normal
            learnable position embedding, normal(0.02) tokens).

    ``out_channels`` = ``embed_dims``; ``patch_resolution`` = the grid at ``img_size``.
    """

    num_extra_tokens: int

    def __init__(
        self,
        arch: str | Mapping[str, int] = "base",
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        norm_cfg: Mapping[str, Any] | None = {"type": "LN", "eps": 1e-6},  # noqa: B006 - never mutated
        final_norm: bool = True,
        with_cls_token: bool = True,
        output_cls_token: bool = True,
        interpolate_mode: str = "bicubic",
        pos_embed_type: str = "learnable",
        stop_grad_conv1: bool = False,
        frozen_stages: int = -1,
        use_mask_token: bool = False,
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        name = type(self).__name__
        settings = resolve_arch(arch, name)
        self.embed_dims = settings["embed_dims"]
        self.num_layers = settings["num_layers"]
        self.img_size = _pair(img_size)
        self.patch_size = int(patch_size)
        if self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise ValueError(f"{name}: img_size {self.img_size} is not divisible by patch_size {patch_size}")
        self.patch_resolution = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
        if output_cls_token and not with_cls_token:
            raise ValueError(f"{name}: output_cls_token=true needs with_cls_token=true")
        if pos_embed_type not in POS_EMBED_TYPES:
            raise ValueError(f"{name}: pos_embed_type must be one of {', '.join(POS_EMBED_TYPES)}, got {pos_embed_type!r}")
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        indices = []
        for index in out_indices:
            resolved = index + self.num_layers if index < 0 else index
            if not 0 <= resolved < self.num_layers:
                raise ValueError(f"{name}: out_indices entry {index} is out of range for {self.num_layers} layers")
            indices.append(resolved)
        self.out_indices = tuple(indices)
        if not -1 <= frozen_stages <= self.num_layers:
            raise ValueError(f"{name}: frozen_stages must be -1..{self.num_layers}, got {frozen_stages}")
        if settings["embed_dims"] % settings["num_heads"]:
            raise ValueError(f"{name}: embed_dims {self.embed_dims} is not divisible by num_heads {settings['num_heads']}")

        self.with_cls_token = with_cls_token
        self.output_cls_token = output_cls_token
        self.final_norm = final_norm
        self.interpolate_mode = interpolate_mode
        self.pos_embed_type = pos_embed_type
        self.stop_grad_conv1 = stop_grad_conv1
        self.frozen_stages = frozen_stages
        self.num_extra_tokens = 1 if with_cls_token else 0
        self.out_channels = self.embed_dims

        self.patch_embed = PatchEmbed(in_channels, self.embed_dims, self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims)) if with_cls_token else None
        num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        self.pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + self.num_extra_tokens, self.embed_dims),
            requires_grad=pos_embed_type == "learnable",
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dims)) if use_mask_token else None
        self.drop_after_pos = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, self.num_layers).tolist()
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(
                self.embed_dims, settings["num_heads"], settings["feedforward_channels"], qkv_bias=qkv_bias,
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=rates[i], norm_cfg=norm_cfg,
            )
            for i in range(self.num_layers)
        )
        self.norm = build_norm_layer(norm_cfg, self.embed_dims, dim=1) if final_norm else nn.Identity()
        register_state_dict_adapter(self)
        self.init_weights()
        if stop_grad_conv1:
            for param in self.patch_embed.parameters():
                param.requires_grad_(False)
        self._freeze_stages()

    # ------------------------------------------------------------------ init / checkpoints

    def default_init(self) -> None:
        """Xavier-uniform linears (q, k, v separately), xavier patch projection, 2-d sin-cos or
        trunc-normal(0.02) position embedding, normal(0.02) cls and mask tokens, LN 1/0."""
        qkv = {id(block.attn.qkv) for block in self.blocks}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if id(m) in qkv:
                    bound = math.sqrt(6.0 / float(m.weight.shape[0] // 3 + m.weight.shape[1]))
                    nn.init.uniform_(m.weight, -bound, bound)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        with torch.no_grad():
            if self.pos_embed_type == "sincos":
                self.pos_embed.copy_(
                    build_2d_sincos_position_embedding(
                        *self.patch_resolution, self.embed_dims, cls_token=self.with_cls_token
                    )
                )
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=0.02)

    def adapt_state_dict(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """Make a checkpoint's ViT keys fit this model (in place, also returned): convert
        mmcls/MMSelfSup key names and resize ``pos_embed`` to this model's grid."""
        if any(k.startswith(prefix + "layers.") or k.startswith(prefix + "patch_embed.projection.") for k in state):
            for key in [k for k in state if k.startswith(prefix)]:
                rest = key[len(prefix):]
                for pattern, repl in _MMCLS_RULES:
                    new_rest, n = pattern.subn(repl, rest)
                    if n:
                        state[prefix + new_rest] = state.pop(key)
                        break
        key = prefix + "pos_embed"
        if key in state and state[key].shape != self.pos_embed.shape:
            state[key] = self._fit_pos_embed(state[key])
        return state

    def _fit_pos_embed(self, pos: torch.Tensor) -> torch.Tensor:
        if pos.dim() != 3 or pos.shape[-1] != self.embed_dims:
            return pos  # reported as a shape mismatch by the loader
        tokens = pos.shape[1]
        extra = self.num_extra_tokens
        side = math.isqrt(tokens - extra) if tokens > extra else 0
        if side * side != tokens - extra:
            # the checkpoint has a cls row this model lacks (or the reverse)
            other = 1 - extra
            side = math.isqrt(tokens - other) if tokens > other else 0
            if side * side != tokens - other:
                return pos
            if other == 1:
                pos = pos[:, 1:]
            else:
                pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
        return resize_pos_embed(pos, (side, side), self.patch_resolution, self.interpolate_mode, extra)

    # ------------------------------------------------------------------ freezing

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: list[nn.Module] = [self.patch_embed, self.drop_after_pos]
        modules += list(self.blocks[: self.frozen_stages])
        if self.frozen_stages == self.num_layers:
            modules.append(self.norm)
        return modules

    def _frozen_parameters(self) -> list[nn.Parameter | None]:
        return [self.cls_token, self.pos_embed, self.mask_token]

    # ------------------------------------------------------------------ forward

    def _embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch embeddings with mask tokens and position embedding, no cls token yet:
        ``(N, C_in, H, W) -> (N, Hp*Wp, C)``, the grid ``(Hp, Wp)``."""
        x = self.patch_embed(x)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError(f"{type(self).__name__}: forward(x, mask) needs use_mask_token=true")
            w = mask_to_token_weights(mask, grid, x)
            x = x * (1.0 - w) + self.mask_token.to(x.dtype) * w
        pos = resize_pos_embed(self.pos_embed, self.patch_resolution, grid, self.interpolate_mode,
                               self.num_extra_tokens)
        return x + pos[:, self.num_extra_tokens:], grid

    def _prepend_cls(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        cls = (self.cls_token + self.pos_embed[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Any, ...]:
        """``(N, C_in, H, W)`` -> tuple with one output per ``out_indices``.

        Each output is ``[patch_map (N, C, Hp, Wp), cls_token (N, C)]`` with
        ``output_cls_token``, else ``patch_map``. ``mask`` (SimMIM, needs
        ``use_mask_token``): ``(N, Hp, Wp)``, ``(N, Hp*Wp)`` or a coarser grid that divides
        ``(Hp, Wp)``; ``1`` marks patches replaced by the mask token.
        """
        x, grid = self._embed(x, mask)
        x = self.drop_after_pos(self._prepend_cls(x))
        outs: dict[int, Any] = {}
        for i, block in enumerate(self.blocks[: max(self.out_indices) + 1]):
            x = block(x)
            if i == self.num_layers - 1 and self.final_norm:
                x = self.norm(x)
            if i in self.out_indices:
                outs[i] = self._format(x, grid)
        return tuple(outs[i] for i in self.out_indices)

    def _format(self, x: torch.Tensor, grid: tuple[int, int]) -> Any:
        n, _, c = x.shape
        patches = x[:, self.num_extra_tokens:].transpose(1, 2).reshape(n, c, grid[0], grid[1])
        if self.output_cls_token:
            return [patches, x[:, 0]]
        return patches

    @staticmethod
    def random_masking(
        x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random ``int(L * (1 - mask_ratio))`` tokens of every sample.

        Args:
            x: ``(N, L, C)`` tokens.
            mask_ratio: fraction of tokens removed, in ``[0, 1)``.
        Returns:
            ``x_kept (N, L_keep, C)`` (in shuffled order), ``mask (N, L)`` with 1 for removed
            tokens in the original order, ``ids_restore (N, L)``: index into
            ``cat([x_kept, removed])`` that restores the original order.
        """
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        n, length, c = x.shape
        keep = int(length * (1 - mask_ratio))
        noise = torch.rand(n, length, device=x.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, c))
        mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_masked(
        self, x: torch.Tensor, mask_ratio: float = 0.75
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MAE encoder: run only on a random ``1 - mask_ratio`` of the patches.

        Returns ``latent (N, extra + L_keep, C)`` (cls token first when ``with_cls_token``,
        after the final norm), ``mask (N, L)`` (1 = removed) and ``ids_restore (N, L)``
        (see :meth:`random_masking`).
        """
        x, _ = self._embed(x)
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        x = self.drop_after_pos(self._prepend_cls(x))
        for block in self.blocks:
            x = block(x)
        return self.norm(x), mask, ids_restore


class MAEViT(VisionTransformer):
    """MMSelfSup's ``MAEViT``: a :class:`VisionTransformer` whose ``forward(x)`` is the MAE
    encoder, returning ``(latent, mask, ids_restore)`` for ``mask_ratio`` (see
    :meth:`VisionTransformer.forward_masked`). Defaults as MMSelfSup: fixed sin-cos position
    embedding, ``arch="base"``. Use ``forward_features(x)`` for unmasked features."""

    def __init__(
        self,
        arch: str | Mapping[str, int] = "base",
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        out_indices: int | Sequence[int] = -1,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        qkv_bias: bool = True,
        norm_cfg: Mapping[str, Any] | None = {"type": "LN", "eps": 1e-6},  # noqa: B006 - never mutated
        final_norm: bool = True,
        output_cls_token: bool = True,
        interpolate_mode: str = "bicubic",
        pos_embed_type: str = "sincos",
        mask_ratio: float = 0.75,
        frozen_stages: int = -1,
        init_cfg: InitCfg = None,
    ) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"MAEViT: mask_ratio must be in [0, 1), got {mask_ratio}")
        super().__init__(
            arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels,
            out_indices=out_indices, drop_rate=drop_rate, drop_path_rate=drop_path_rate, qkv_bias=qkv_bias,
            norm_cfg=norm_cfg, final_norm=final_norm, output_cls_token=output_cls_token,
            interpolate_mode=interpolate_mode, pos_embed_type=pos_embed_type, frozen_stages=frozen_stages,
            init_cfg=init_cfg,
        )
        self.mask_ratio = float(mask_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[Any, ...]:  # type: ignore[override]
        """``(N, C_in, H, W)`` -> ``(latent, mask, ids_restore)`` with ``self.mask_ratio``."""
        if mask is not None:
            raise ValueError("MAEViT.forward draws its own random mask; use VisionTransformer for SimMIM masks")
        return self.forward_masked(x, self.mask_ratio)

    def forward_features(self, x: torch.Tensor) -> tuple[Any, ...]:
        """Unmasked features, as :meth:`VisionTransformer.forward`."""
        return super().forward(x)
