"""CAE: Context Autoencoder for Self-Supervised Representation Learning.

Chen, Ding, Chen, Xu, Zhang, Wang, Tian, Zeng and Zeng, 2022. The encoder (``CAEViT``) sees
only the visible patches; a latent contextual regressor (cross-attention from mask-token
queries to the visible representations) predicts the representations of the masked patches,
aligned (MSE, weight ``lambd``) with what a momentum copy of the encoder computes from the
masked patches themselves; a decoder maps the predicted representations to the codes that a
frozen tokenizer (the DALL-E dVAE encoder, :class:`~selfsup_mim.dalle.DALLEEncoder`) gives the
masked patches of a second, smaller crop (cross-entropy). ``loss = main + lambd * align``.

Components (MMSelfSup 0.x names): algorithm ``CAE`` (``base_momentum``), backbone ``CAEViT``,
neck ``CAENeck``, head ``CAEHead`` (``tokenizer_path``, ``lambd``), pipeline transforms
``RandomResizedCropAndInterpolationWithTwoPic`` (adds ``"img_target"``) and
``BEiTMaskGenerator`` (adds ``"mask"``).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import nn

from selfsup_core.api import SelfSupError
from selfsup_models.algorithm import BaseAlgorithm, check_views
from selfsup_models.backbones.transformer_layers import DropPath, Mlp, TransformerEncoderLayer
from selfsup_models.backbones.vision_transformer import VisionTransformer
from selfsup_models.init import BaseModule
from selfsup_models.norm import build_norm_layer

from .dalle import DALLEEncoder, load_tokenizer_weights

__all__ = ["CAE", "CAEHead", "CAENeck", "CAEViT", "LayerScaleEncoderLayer", "CrossAttentionLayer"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]
LN = {"type": "LN", "eps": 1e-6}


class LayerScaleEncoderLayer(TransformerEncoderLayer):
    """A pre-norm block with layer scale (``gamma_1``, ``gamma_2``, BEiT/CAE):
    ``x + drop_path(gamma_1 * attn(norm1(x)))``, then the same with the MLP."""

    gamma_1: nn.Parameter
    gamma_2: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))


def add_layer_scale(block: TransformerEncoderLayer, dim: int, init_values: float) -> None:
    """Turn ``block`` into a :class:`LayerScaleEncoderLayer` with gammas filled with ``init_values``."""
    block.gamma_1 = nn.Parameter(torch.full((dim,), float(init_values)))
    block.gamma_2 = nn.Parameter(torch.full((dim,), float(init_values)))
    block.__class__ = LayerScaleEncoderLayer


class CAEViT(VisionTransformer):
    """MMSelfSup's ``CAEViT``: a ViT (fixed 2-d sin-cos position embedding, cls token) whose
    blocks have layer scale ``init_values`` (0.1 in the 0.x config; ``None`` = none).

    ``forward(x)`` gives unmasked features as the ViT does (evaluation); :meth:`forward_visible`
    is the pre-training encoder.
    """

    def __init__(self, arch: Union[str, Mapping[str, int]] = "base", img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16, in_channels: int = 3, out_indices: Union[int, Sequence[int]] = -1,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 qkv_bias: bool = True, norm_cfg: Union[Mapping[str, Any], None] = None, final_norm: bool = True,
                 output_cls_token: bool = True, interpolate_mode: str = "bicubic",
                 init_values: Union[float, None] = None, pos_embed_type: str = "sincos", frozen_stages: int = -1,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(arch=arch, img_size=img_size, patch_size=patch_size, in_channels=in_channels,
                         out_indices=out_indices, drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                         drop_path_rate=drop_path_rate, qkv_bias=qkv_bias, norm_cfg=norm_cfg or {"type": "LN", "eps": 1e-6},
                         final_norm=final_norm, with_cls_token=True, output_cls_token=output_cls_token,
                         interpolate_mode=interpolate_mode,
                         pos_embed_type=pos_embed_type, frozen_stages=frozen_stages, init_cfg=init_cfg)
        self.init_values = init_values
        if init_values:
            for block in self.blocks:
                add_layer_scale(block, self.embed_dims, init_values)
            self._freeze_stages()  # the new gammas of frozen blocks too

    def forward_visible(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Images ``(N, C, H, W)``, ``mask (N, L)`` bool with the same count per sample
        (True = left out) -> ``(N, 1 + kept, C)`` after the final norm (cls token first)."""
        tokens, _ = self._embed(x)
        n, length, c = tokens.shape
        keep = ~mask.reshape(n, -1).bool()
        if keep.shape[1] != length:
            raise ValueError(f"CAEViT: mask has {keep.shape[1]} entries per image but there are {length} patches")
        counts = keep.sum(dim=1)
        if not bool((counts == counts[0]).all()):
            raise ValueError("CAEViT: every image of a batch must keep the same number of patches "
                             "(use BEiTMaskGenerator with a fixed num_masking_patches)")
        tokens = tokens[keep].reshape(n, int(counts[0]), c)
        tokens = self.drop_after_pos(self._prepend_cls(tokens))
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class _CrossAttention(nn.Module):
    """Multi-head attention of queries ``(N, Lq, C)`` over keys/values ``(N, Lk, C)``; q and v
    have a bias, k none (BEiT/CAE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CAENeck: embed_dims {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, lq, c = q.shape
        h = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, t.shape[1], h, c // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q(q)), split(self.k(k)), split(self.v(v)),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(n, lq, c)))


class CrossAttentionLayer(nn.Module):
    """CAE's regressor layer: ``x = x_q + gamma_1 * attn(norm_q(x_q + pos_q), norm_k(x_kv + pos_k),
    norm_v(x_kv))``; ``x = norm2(x)``; ``x + gamma_2 * mlp(x)``."""

    def __init__(self, dim: int, num_heads: int, hidden: int, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_cfg: Union[Mapping[str, Any], None] = None, init_values: Union[float, None] = None) -> None:
        super().__init__()
        norm_cfg = norm_cfg or LN
        self.norm1_q = build_norm_layer(norm_cfg, dim, dim=1)
        self.norm1_k = build_norm_layer(norm_cfg, dim, dim=1)
        self.norm1_v = build_norm_layer(norm_cfg, dim, dim=1)
        self.cross_attn = _CrossAttention(dim, num_heads, qkv_bias, attn_drop_rate, drop_rate)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = build_norm_layer(norm_cfg, dim, dim=1)
        self.mlp = Mlp(dim, hidden, drop=drop_rate)
        scale = float(init_values) if init_values else 1.0
        self.gamma_1 = nn.Parameter(torch.full((dim,), scale), requires_grad=bool(init_values))
        self.gamma_2 = nn.Parameter(torch.full((dim,), scale), requires_grad=bool(init_values))

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor:
        attn = self.cross_attn(self.norm1_q(x_q + pos_q), self.norm1_k(x_kv + pos_k), self.norm1_v(x_kv))
        x = self.norm2(x_q + self.drop_path(self.gamma_1 * attn))
        return x + self.drop_path(self.gamma_2 * self.mlp(x))


class CAENeck(BaseModule):
    """CAE's latent contextual regressor and decoder.

    Args:
        patch_size: the encoder's patch size (recorded; as 0.x).
        num_classes: tokenizer codebook size (8192).
        embed_dims, num_heads, mlp_ratio, qkv_bias: width of both stacks (the encoder's).
        regressor_depth: cross-attention layers of the regressor (4 in the 0.x config).
        decoder_depth: self-attention layers of the decoder (4 in the 0.x config).
        drop_rate, attn_drop_rate, drop_path_rate, norm_cfg, init_values: as the encoder.
        mask_tokens_num: accepted for 0.x configs; the mask decides how many tokens are predicted.
        qk_scale: accepted for 0.x configs; must be ``None`` (the scale is ``head_dim ** -0.5``).

    ``forward(x_unmasked (N, Lv, C), pos_masked (N, Lm, C), pos_unmasked (N, Lv, C))`` ->
    ``(logits (N, Lm, num_classes), latent_pred (N, Lm, C))``.
    """

    def __init__(self, patch_size: int = 16, num_classes: int = 8192, embed_dims: int = 768, regressor_depth: int = 6,
                 decoder_depth: int = 8, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Union[float, None] = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_cfg: Union[Mapping[str, Any], None] = None,
                 init_values: Union[float, None] = None, mask_tokens_num: int = 75, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if qk_scale is not None:
            raise ValueError("CAENeck: qk_scale must be unset (the attention scale is head_dim ** -0.5)")
        if regressor_depth < 1 or decoder_depth < 0:
            raise ValueError("CAENeck: regressor_depth must be >= 1 and decoder_depth >= 0")
        norm_cfg = norm_cfg or LN
        self.patch_size, self.num_classes, self.embed_dims = int(patch_size), int(num_classes), int(embed_dims)
        hidden = int(embed_dims * mlp_ratio)
        rates = torch.linspace(0, drop_path_rate, regressor_depth).tolist()  # each stack rises to the rate
        self.regressors = nn.ModuleList(
            CrossAttentionLayer(embed_dims, num_heads, hidden, qkv_bias, drop_rate, attn_drop_rate, rates[i],
                                norm_cfg, init_values) for i in range(regressor_depth))
        rates = torch.linspace(0, drop_path_rate, decoder_depth).tolist()
        self.decoders = nn.ModuleList()
        for i in range(decoder_depth):
            block = TransformerEncoderLayer(embed_dims, num_heads, hidden, qkv_bias=qkv_bias, drop_rate=drop_rate,
                                            attn_drop_rate=attn_drop_rate,
                                            drop_path_rate=rates[i], norm_cfg=norm_cfg)
            if init_values:
                add_layer_scale(block, embed_dims, init_values)
            self.decoders.append(block)
        self.norm_regressor = build_norm_layer(norm_cfg, embed_dims, dim=1)
        self.norm_decoder = build_norm_layer(norm_cfg, embed_dims, dim=1)
        self.head = nn.Linear(embed_dims, num_classes)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        # MMSelfSup 0.x's init: xavier-uniform linears with zero bias, LayerNorms (1, 0),
        # trunc-normal(0.02) mask token and classifier
        self.apply(self._init_linear)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x_unmasked: torch.Tensor, pos_masked: torch.Tensor,
                pos_unmasked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, lm, c = pos_masked.shape
        x_masked = self.mask_token.to(x_unmasked.dtype).expand(n, lm, c)
        pos_all = torch.cat([pos_unmasked, pos_masked], dim=1)
        for layer in self.regressors:
            x_masked = layer(x_masked, torch.cat([x_unmasked, x_masked], dim=1), pos_masked, pos_all)
        latent_pred = self.norm_regressor(x_masked)
        x = latent_pred + pos_masked
        for block in self.decoders:
            x = block(x)
        return self.head(self.norm_decoder(x)), latent_pred


class TokenizerMissingError(SelfSupError, FileNotFoundError):
    """The tokenizer weights a CAE config names are not on this machine (one line, exit 2)."""


class CAEHead(BaseModule):
    """CAE's losses: cross-entropy of the decoder's logits against the tokenizer's codes of
    the masked patches (``main``) and ``lambd`` x MSE between the regressor's predictions and
    the momentum encoder's representations of the masked patches (``align``).

    Args:
        tokenizer_path: a state dict of the tokenizer (the DALL-E encoder weights, e.g. from
            ``selfsup-run import-weights``), loaded when the head is built if the file exists;
            a file of another architecture is refused. ``None`` or a missing file: random
            tokenizer weights (a missing file is reported when training starts).
        lambd: weight of the alignment loss (2 in the 0.x config). ``lamb``: its 0.x alias.
        tokenizer: :class:`DALLEEncoder` arguments (default: DALL-E's own).
        map_pixels: apply DALL-E's ``0.8 x + 0.1`` to the target image (pixels in [0, 1]) first.
        init_cfg: unused.
    """

    def __init__(self, tokenizer_path: Union[str, None] = None, lambd: float = 2.0, lamb: Union[float, None] = None,
                 tokenizer: Union[Mapping[str, Any], None] = None, map_pixels: bool = True,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.lambd = float(lamb if lamb is not None else lambd)
        if self.lambd < 0:
            raise ValueError(f"CAEHead: lambd must be >= 0, got {self.lambd}")
        self.map_pixels = bool(map_pixels)
        self.encoder = DALLEEncoder(**dict(tokenizer or {}))
        self.tokenizer_path = tokenizer_path
        self.tokenizer_loaded = False
        if tokenizer_path and os.path.isfile(os.path.expanduser(tokenizer_path)):
            load_tokenizer_weights(self.encoder, os.path.expanduser(tokenizer_path), "model.head.tokenizer_path")
            self.tokenizer_loaded = True
        for param in self.encoder.parameters():
            param.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> "CAEHead":
        super().train(mode)
        self.encoder.eval()  # the tokenizer is frozen
        return self

    def check_tokenizer(self) -> None:
        """Raise (naming the key) when ``tokenizer_path`` was given but the file is missing;
        called at the first training step, so that ``--check`` works without the weights."""
        if self.tokenizer_path and not self.tokenizer_loaded:
            raise TokenizerMissingError(f"model.head.tokenizer_path = {self.tokenizer_path!r}: no such file; import the "
                                    "DALL-E encoder weights with 'selfsup-run import-weights' or drop the key to "
                                    "train with a random tokenizer")

    @torch.no_grad()
    def target(self, img_target: torch.Tensor) -> torch.Tensor:
        """Token codes ``(N, h*w)``: argmax of the tokenizer's logits on the target image."""
        x = img_target.float()
        if self.map_pixels:
            x = 0.8 * x + 0.1
        return self.encoder(x).argmax(dim=1).flatten(1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, latent_pred: torch.Tensor,
             latent_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(main, align)``: ``CE(logits (M, K), target (M,))`` (mean) and
        ``lambd * mean((latent_pred - latent_target)^2)``."""
        main = F.cross_entropy(logits.float(), target)
        align = F.mse_loss(latent_pred.float(), latent_target.detach().float()) * self.lambd
        return main, align

    def forward(self, img_target: torch.Tensor, logits: torch.Tensor, latent_pred: torch.Tensor,
                latent_target: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        codes = self.target(img_target)
        mask = mask.flatten(1).bool()
        if codes.shape != mask.shape:
            raise ValueError(f"CAEHead: the tokenizer gives {codes.shape[1]} codes per image but the mask has "
                             f"{mask.shape[1]} patches; make the second crop {self.encoder.downsample}x the patch grid")
        main, align = self.loss(logits.reshape(-1, logits.shape[-1]), codes[mask], latent_pred, latent_target)
        return {"loss": main + align, "main": main.detach(), "align": align.detach()}


class CAE(BaseAlgorithm):
    """CAE pre-training.

    Args:
        backbone: ``CAEViT``; a frozen copy (the ``teacher``) follows it by
            ``teacher = m * teacher + (1 - m) * backbone`` after each step's teacher pass.
        neck: ``CAENeck``. head: ``CAEHead``.
        base_momentum: ``m`` (0.0 in the 0.x config: the teacher is the current encoder).
        init_cfg: applied to the whole algorithm after the components' own init.

    ``forward_train(img, mask, img_target)``: images ``(N, C, H, W)``, ``mask (N, h, w)`` from
    ``BEiTMaskGenerator`` (1 = masked) and the tokenizer's image ``img_target`` from
    ``RandomResizedCropAndInterpolationWithTwoPic``; returns ``{"loss", "main", "align"}``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.0,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if not callable(getattr(backbone, "forward_visible", None)):
            raise ValueError(f"CAE: model.backbone must be a CAEViT, got {type(backbone).__name__}")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"CAE: model.base_momentum must be in [0, 1], got {base_momentum}")
        if getattr(neck, "embed_dims", backbone.embed_dims) != backbone.embed_dims:
            raise ValueError(f"CAE: model.neck.embed_dims = {neck.embed_dims} but the backbone is "
                             f"{backbone.embed_dims} wide")
        self.momentum = float(base_momentum)
        self.init_weights()
        self.teacher = copy.deepcopy(backbone)
        for param in self.teacher.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``teacher = m * teacher + (1 - m) * backbone``, parameter by parameter."""
        for p_t, p_s in zip(self.teacher.parameters(), self.backbone.parameters()):
            p_t.mul_(self.momentum).add_(p_s.detach(), alpha=1.0 - self.momentum)

    def forward_train(self, img: Any, mask: Any = None, img_target: Any = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        view = check_views("CAE", img, 1)[0]
        if mask is None or img_target is None:
            raise ValueError("CAE: the batch needs 'mask' and 'img_target'; put RandomResizedCropAndInterpolationWithTwo"
                             "Pic and BEiTMaskGenerator in data.train.pipeline")
        if isinstance(mask, (list, tuple)):
            mask = check_views("CAE", mask, 1)[0]
        check = getattr(self.head, "check_tokenizer", None)
        if callable(check):
            check()
        n = view.shape[0]
        mask = mask.reshape(n, -1).bool()
        unmasked = self.backbone.forward_visible(view, mask)
        with torch.no_grad():
            latent_target = self.teacher.forward_visible(view, ~mask)[:, self.teacher.num_extra_tokens:]
            self.momentum_update()
        extra = self.backbone.num_extra_tokens
        pos = self.backbone.pos_embed[:, extra:].to(unmasked.dtype).expand(n, -1, -1)
        c = pos.shape[-1]
        pos_masked = pos[mask].reshape(n, -1, c)
        pos_unmasked = pos[~mask].reshape(n, -1, c)
        logits, latent_pred = self.neck(unmasked[:, extra:], pos_masked, pos_unmasked)
        return self.head(img_target, logits, latent_pred, latent_target, mask)
