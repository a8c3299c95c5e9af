"""Decoders of masked image modelling: MAE's lightweight transformer decoder and SimMIM's
one-layer prediction head (called necks, as in MMSelfSup)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from torch import nn

from selfsup_models.backbones.transformer_layers import TransformerEncoderLayer, build_2d_sincos_position_embedding
from selfsup_models.init import BaseModule
from selfsup_models.norm import build_norm_layer

__all__ = ["MAEPretrainDecoder", "SimMIMNeck"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]


def _single(x: Any) -> Any:
    """The neck input: a list/tuple holding one element (the contract) or the element itself."""
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ValueError(f"expected one input, got {len(x)}")
        return x[0]
    return x


class MAEPretrainDecoder(BaseModule):
    """The MAE decoder: visible-patch latents + mask tokens -> pixel predictions per patch.

    ``embed -> append mask tokens -> un-shuffle to the original patch order -> + fixed 2-d
    sin-cos position embedding -> decoder blocks -> norm -> linear to p*p*C pixels``; the
    cls token travels through the decoder and is dropped at the end.

    Args:
        num_patches: patches of the encoder's grid (a square, e.g. 196 = 14x14).
        patch_size: the encoder's patch side in pixels.
        in_chans: image channels (3 RGB, 1 grey).
        embed_dim: the encoder's embedding size (its ``embed_dims``).
        decoder_embed_dim: the decoder's width (512 in MAE).
        decoder_depth: decoder blocks (8).
        decoder_num_heads: attention heads (16).
        mlp_ratio: MLP hidden size / width (4).
        norm_cfg: norm of the blocks and the final norm (``{type = "LN", eps = 1e-6}``).
        init_cfg: applied after the default init (xavier-uniform linears, normal(0.02) mask
            token, LN 1/0; the position embedding is fixed).

    ``forward([latent], ids_restore)``: ``latent (N, 1 + L_keep, embed_dim)`` (cls token
    first) and ``ids_restore (N, L)`` from the encoder; returns ``[pred (N, L, p*p*C)]``.
    """

    def __init__(
        self,
        num_patches: int = 196,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_cfg: Mapping[str, Any] | None = {"type": "LN", "eps": 1e-6},  # noqa: B006 - never mutated
        init_cfg: InitCfg = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        side = math.isqrt(num_patches) if num_patches > 0 else 0
        if side * side != num_patches:
            raise ValueError(f"MAEPretrainDecoder: num_patches must be a square number of patches, got {num_patches}")
        if decoder_embed_dim % decoder_num_heads:
            raise ValueError(f"MAEPretrainDecoder: decoder_embed_dim {decoder_embed_dim} is not divisible by "
                             f"decoder_num_heads {decoder_num_heads}")
        self.num_patches = num_patches
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            TransformerEncoderLayer(decoder_embed_dim, decoder_num_heads, int(decoder_embed_dim * mlp_ratio),
                                    qkv_bias=True, norm_cfg=norm_cfg)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = build_norm_layer(norm_cfg, decoder_embed_dim, dim=1)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.init_weights()

    def default_init(self) -> None:
        with torch.no_grad():
            side = math.isqrt(self.num_patches)
            self.decoder_pos_embed.copy_(
                build_2d_sincos_position_embedding(side, side, self.decoder_pos_embed.shape[-1], cls_token=True))
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Any, ids_restore: torch.Tensor) -> list[torch.Tensor]:
        x = self.decoder_embed(_single(x))
        n, length = ids_restore.shape
        if length != self.num_patches:
            raise ValueError(f"MAEPretrainDecoder: the encoder has {length} patches, num_patches is {self.num_patches}")
        visible = x[:, 1:]
        mask_tokens = self.mask_token.to(x.dtype).expand(n, length - visible.shape[1], -1)
        tokens = torch.cat([visible, mask_tokens], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed.to(x.dtype)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))
        return [x[:, 1:]]


class SimMIMNeck(BaseModule):
    """SimMIM's prediction head: a 1x1 conv to ``encoder_stride**2 * out_channels`` channels
    and a pixel shuffle back to image resolution.

    Args:
        in_channels: channels of the backbone's last feature map (1024 for Swin-B).
        encoder_stride: the backbone's total stride (32 for Swin, the patch size for a ViT).
        out_channels: image channels to predict (3 RGB, 1 grey).
        init_cfg: applied after PyTorch's default conv init.

    ``forward([feat])``: ``feat (N, in_channels, H/s, W/s)`` -> ``[img_rec (N, out_channels, H, W)]``.
    """

    def __init__(self, in_channels: int, encoder_stride: int, out_channels: int = 3, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if in_channels < 1 or encoder_stride < 1 or out_channels < 1:
            raise ValueError("SimMIMNeck: in_channels, encoder_stride and out_channels must be >= 1")
        self.in_channels = in_channels
        self.encoder_stride = encoder_stride
        self.decoder = nn.Sequential(
            nn.Conv2d(in_channels, encoder_stride**2 * out_channels, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )
        self.init_weights()

    def forward(self, x: Any) -> list[torch.Tensor]:
        feat = _single(x)
        if feat.dim() != 4 or feat.shape[1] != self.in_channels:
            raise ValueError(f"SimMIMNeck: expected a feature map (N, {self.in_channels}, h, w), got "
                             f"{tuple(feat.shape)}; set in_channels to the backbone's out_channels")
        return [self.decoder(feat)]
