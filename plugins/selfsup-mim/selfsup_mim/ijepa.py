"""I-JEPA: the image-based joint-embedding predictive architecture.

Assran, Duval, Misra, Bojanowski, Vincent, Rabbat, LeCun and Ballas, "Self-Supervised Learning
from Images with a Joint-Embedding Predictive Architecture", CVPR 2023.

One view per image (a random resized crop, no other augmentation). The
:class:`~selfsup_mim.ijepa_masks.MultiBlockMaskGenerator` draws a context block and 4 target
blocks on the patch grid, target patches removed from the context. The context encoder (the
trained ViT, no [cls] token) sees only the context patches; the target encoder, an EMA of it
(momentum 0.996 rising linearly to 1 with the ``LinearMomentumUpdate`` hook), sees the whole
image and its output tokens, layer-normalised (no affine), are the targets at the target
blocks' positions. The predictor, a narrow ViT (:class:`IJEPAPredictor`), receives the
context tokens and one mask token per target patch, each with the fixed sin-cos position
embedding of its patch, and predicts the target tokens; one predictor pass per target block.
The loss (:class:`IJEPAHead`) is the mean squared error (the paper's L2) or the smooth-L1 of
the released code, averaged over the target blocks, patches and channels.

For evaluation the *target* encoder is used (the paper's choice): ``extract`` mode returns
its patch map, which kNN and linear evaluation average-pool.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
import torch.nn.functional as F
from selfsup_core.api import MomentumUpdate
from selfsup_models.algorithm import BaseAlgorithm, check_views, make_momentum_copy, momentum_update_
from selfsup_models.backbones.transformer_layers import TransformerEncoderLayer, build_2d_sincos_position_embedding
from selfsup_models.init import BaseModule
from selfsup_models.norm import build_norm_layer
from torch import nn

from .ijepa_masks import MultiBlockMaskGenerator

__all__ = ["IJEPA", "IJEPAHead", "IJEPAPredictor", "LinearMomentumUpdate", "encode_patches", "gather_tokens"]

InitCfg = Union[Mapping[str, Any], Sequence[Mapping[str, Any]], None]
LOSSES = ("l2", "smooth_l1")


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x (B, L, C)`` at the patch indices ``index (B, K)`` -> ``(B, K, C)``."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.size(-1)))


def encode_patches(vit: nn.Module, img: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """A ``VisionTransformer`` without [cls] token run on the patches ``keep (B, K)`` only
    (all of them when ``None``): patch embedding + position embedding, the kept tokens, every
    block, the final norm. Returns ``(B, K or L, C)``; called for the context and the target
    encoders at every step."""
    x, _ = vit._embed(img)
    if keep is not None:
        x = gather_tokens(x, keep)
    x = vit.drop_after_pos(x)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x)


class IJEPAPredictor(BaseModule):
    """I-JEPA's narrow ViT predictor.

    ``predictor_embed`` (``embed_dim -> predictor_embed_dim``) of the context tokens, plus the
    fixed 2-d sin-cos position embedding of their patches; one learnable ``mask_token`` per
    target patch, plus that patch's position embedding; ``depth`` pre-norm blocks over both;
    a final norm; ``predictor_proj`` back to ``embed_dim`` at the target positions.

    Args:
        num_patches: patches of the encoder's square grid (196 = 14 x 14 for ViT-B/16 at 224).
        embed_dim: the encoder's width (768 for ViT-B).
        predictor_embed_dim: the predictor's width (384 in the paper for every encoder).
        depth: predictor blocks (the paper: 6 for ViT-B/16, 12 for ViT-L and ViT-H).
        num_heads: attention heads (the paper: the encoder's, 12 for ViT-B).
        mlp_ratio: MLP hidden size / width (4).
        qkv_bias: bias in the qkv projections.
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        norm_cfg: norm of the blocks and the final norm (``{type = "LN", eps = 1e-6}``).
        init_cfg: applied after the default init (trunc-normal(0.02) linears and mask token,
            zero biases, LN 1/0, each block's output projections scaled by ``1/sqrt(2 i)``
            for block ``i = 1 .. depth``, as the reference code).

    ``forward(context (N, Lc, embed_dim), context_idx (N, Lc), target_idx (N, Lt))`` returns
    the predictions ``(N, Lt, embed_dim)``.
    """

    def __init__(self, num_patches: int = 196, embed_dim: int = 768, predictor_embed_dim: int = 384, depth: int = 6,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 norm_cfg: Mapping[str, Any] | None = {"type": "LN", "eps": 1e-6},  # noqa: B006 - never mutated
                 init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        side = math.isqrt(num_patches)
        if num_patches < 1 or side * side != num_patches:
            raise ValueError(f"IJEPAPredictor: num_patches must be a square (e.g. 196 = 14 x 14), got {num_patches}")
        if depth < 1:
            raise ValueError(f"IJEPAPredictor: depth must be >= 1, got {depth}")
        self.num_patches = int(num_patches)
        self.embed_dim = int(embed_dim)
        self.predictor_embed_dim = int(predictor_embed_dim)
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, predictor_embed_dim))
        self.pos_embed = nn.Parameter(build_2d_sincos_position_embedding(side, side, predictor_embed_dim),
                                      requires_grad=False)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerEncoderLayer(predictor_embed_dim, num_heads, int(predictor_embed_dim * mlp_ratio),
                                    qkv_bias=qkv_bias, drop_path_rate=rates[i], norm_cfg=norm_cfg)
            for i in range(depth))
        self.norm = build_norm_layer(norm_cfg, predictor_embed_dim, dim=1)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim)
        self.init_weights()

    def default_init(self) -> None:
        """See the class docstring (called by ``init_weights``)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            for i, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * i))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed.to(context.dtype).expand(context.size(0), -1, -1)
        x = self.predictor_embed(context) + gather_tokens(pos, context_idx)
        queries = self.mask_token.to(x.dtype) + gather_tokens(pos, target_idx).to(x.dtype)
        x = torch.cat([x, queries], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x[:, context_idx.size(1):])
        return self.predictor_proj(x)


class IJEPAHead(BaseModule):
    """I-JEPA's loss in representation space.

    Args:
        loss: ``"l2"`` (the paper: mean squared error) or ``"smooth_l1"`` (the released code:
            PyTorch's smooth-L1 with ``beta = 1``).
        norm_target: layer-normalise the target tokens over the channels (no affine), as the
            paper's code does.
        init_cfg: unused (no parameters); accepted as every component's.

    ``forward(pred (N, L, C), target (N, L, C)) -> {"loss"}``: the mean over every element;
    the target carries no gradient. Float32 or above under autocast.
    """

    def __init__(self, loss: str = "l2", norm_target: bool = True, init_cfg: InitCfg = None) -> None:
        super().__init__(init_cfg)
        if loss not in LOSSES:
            raise ValueError(f"IJEPAHead: loss must be \"l2\" or \"smooth_l1\", got {loss!r}")
        self.loss = loss
        self.norm_target = bool(norm_target)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type=pred.device.type, enabled=False):
            pred = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
            target = target.detach().to(pred.dtype)
            if self.norm_target:
                target = F.layer_norm(target, (target.size(-1),))
            if self.loss == "l2":
                return {"loss": F.mse_loss(pred, target)}
            return {"loss": F.smooth_l1_loss(pred, target, beta=1.0)}


class IJEPA(BaseAlgorithm):
    """I-JEPA pre-training (see the module docstring).

    Args:
        backbone: a ``VisionTransformer`` with ``with_cls_token = false`` (the context encoder;
            the target encoder is its EMA copy).
        neck: :class:`IJEPAPredictor` whose ``num_patches`` and ``embed_dim`` match the backbone.
        head: :class:`IJEPAHead`.
        base_momentum: the EMA momentum at the first iteration (0.996); the
            ``LinearMomentumUpdate`` hook raises it linearly to its ``end_momentum`` (1.0).
        num_targets, target_scale, target_aspect_ratio, context_scale, context_aspect_ratio,
            min_keep: the mask sampler's settings (see :class:`MultiBlockMaskGenerator`).
        init_cfg: applied to the whole algorithm before the target copy is made.

    Attributes: ``momentum`` (set by the hook), ``target_backbone``, ``mask_generator``.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, head: nn.Module, base_momentum: float = 0.996,
                 num_targets: int = 4, target_scale: Sequence[float] = (0.15, 0.2),
                 target_aspect_ratio: Sequence[float] = (0.75, 1.5), context_scale: Sequence[float] = (0.85, 1.0),
                 context_aspect_ratio: Sequence[float] = (1.0, 1.0), min_keep: int = 10,
                 init_cfg: InitCfg = None) -> None:
        super().__init__(backbone, neck, head, init_cfg=init_cfg)
        if not callable(getattr(backbone, "_embed", None)) or not hasattr(backbone, "blocks"):
            raise ValueError(f"IJEPA: the backbone must be a VisionTransformer (model.backbone.type = "
                             f"\"VisionTransformer\"), got {type(backbone).__name__}")
        if getattr(backbone, "num_extra_tokens", 0) != 0:
            raise ValueError("IJEPA: the encoder has no [cls] token; set model.backbone.with_cls_token = false "
                             "and output_cls_token = false")
        if neck is None or head is None:
            raise ValueError("IJEPA: needs a [model.neck] (IJEPAPredictor) and a [model.head] (IJEPAHead)")
        grid = tuple(backbone.patch_resolution)
        if getattr(neck, "num_patches", grid[0] * grid[1]) != grid[0] * grid[1]:
            raise ValueError(f"IJEPA: model.neck.num_patches = {neck.num_patches} but the backbone has "
                             f"{grid[0] * grid[1]} patches; set num_patches = (img_size / patch_size) ** 2")
        if getattr(neck, "embed_dim", backbone.embed_dims) != backbone.embed_dims:
            raise ValueError(f"IJEPA: model.neck.embed_dim = {neck.embed_dim} but the backbone's embed_dims is "
                             f"{backbone.embed_dims}")
        if not 0.0 <= base_momentum <= 1.0:
            raise ValueError(f"IJEPA: base_momentum must be in [0, 1], got {base_momentum}")
        self.base_momentum = float(base_momentum)
        self.momentum = float(base_momentum)
        self.mask_generator = MultiBlockMaskGenerator(
            grid, num_targets=num_targets, target_scale=target_scale, target_aspect_ratio=target_aspect_ratio,
            context_scale=context_scale, context_aspect_ratio=context_aspect_ratio, min_keep=min_keep)
        self.init_weights()
        self.target_backbone = make_momentum_copy(self.backbone)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``target = momentum * target + (1 - momentum) * context encoder`` (after every step)."""
        momentum_update_(self.target_backbone, self.backbone, self.momentum)

    def extract_feat(self, img: torch.Tensor) -> tuple[Any, ...]:
        """The target encoder's outputs for whole images (the paper evaluates it)."""
        return self.target_backbone(img)

    def predict(self, img: torch.Tensor, context_idx: torch.Tensor,
                target_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions and targets ``(T * N, Lt, C)`` each for masks ``context_idx (N, Lc)`` and
        ``target_idx (T, N, Lt)`` (target block ``t`` of image ``n`` at row ``t * N + n``)."""
        num_targets, n, length = target_idx.shape
        with torch.no_grad():
            tokens = encode_patches(self.target_backbone, img)
            target = torch.cat([gather_tokens(tokens, t) for t in target_idx])
        context = encode_patches(self.backbone, img, context_idx)
        pred = self.neck(context.repeat(num_targets, 1, 1), context_idx.repeat(num_targets, 1),
                         target_idx.reshape(num_targets * n, length))
        return pred, target

    def forward_train(self, img: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``img``: one view ``(N, C, H, W)``. Returns ``{"loss"}``."""
        view = check_views("IJEPA", img, 1)[0]
        context_idx, target_idx = self.mask_generator(view.size(0), device=view.device)
        pred, target = self.predict(view, context_idx, target_idx)
        return self.head(pred, target)


class LinearMomentumUpdate(MomentumUpdate):
    """EMA update of a target network with a *linear* momentum schedule (I-JEPA, following
    DINO and MSN): before every iteration the algorithm's ``momentum`` is set to
    ``base + (end_momentum - base) * iter / max_iters`` (``base``: its ``base_momentum``);
    after every ``update_interval``-th optimizer step its ``momentum_update()`` runs. Otherwise
    the core's ``MomentumUpdate`` (whose schedule is BYOL's cosine).

    Args:
        end_momentum: the momentum reached at the last iteration (1.0).
        update_interval: optimizer steps between updates (1: every step).
    """

    def selfsup_before_iter(self, runner: Any) -> None:
        model = runner.model
        progress = runner.iter / max(runner.max_iters, 1)
        model.momentum = model.base_momentum + (self.end_momentum - model.base_momentum) * progress
