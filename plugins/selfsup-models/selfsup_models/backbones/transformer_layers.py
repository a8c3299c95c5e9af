"""Building blocks shared by the transformer backbones: DropPath, MLP, attention, encoder block,
2-d sin-cos position embeddings and position-embedding resizing.

Module names follow timm / the MAE and MoCo v3 reference code (``blocks.i.norm1``,
``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``), so their checkpoints load as they are.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..norm import build_norm_layer

__all__ = [
    "DropPath",
    "Mlp",
    "MultiheadAttention",
    "TransformerEncoderLayer",
    "build_2d_sincos_position_embedding",
    "mask_to_token_weights",
    "register_state_dict_adapter",
    "resize_pos_embed",
]


class DropPath(nn.Module):
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob``
    in training and rescale the rest by ``1 / (1 - drop_prob)``. Identity in eval."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Mlp(nn.Module):
    """``fc1 -> GELU -> dropout -> fc2 -> dropout``; ``(..., C) -> (..., C)``."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MultiheadAttention(nn.Module):
    """Multi-head self-attention with ``scaled_dot_product_attention``.

    ``(N, L, C) -> (N, L, C)``; ``attn_bias`` (optional) is an additive float mask that
    broadcasts to ``(N, heads, L, L)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        n, length, c = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(n, length, c)
        return self.proj_drop(self.proj(out))


class TransformerEncoderLayer(nn.Module):
    """Pre-norm transformer block: ``x + drop_path(attn(norm1(x)))``, then the same with the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        feedforward_channels: int,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_cfg: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        norm_cfg = norm_cfg if norm_cfg is not None else {"type": "LN", "eps": 1e-6}
        self.norm1 = build_norm_layer(norm_cfg, dim, dim=1)
        self.attn = MultiheadAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop_rate,
                                       proj_drop=drop_rate)
        self.drop_path = DropPath(drop_path_rate)
        self.norm2 = build_norm_layer(norm_cfg, dim, dim=1)
        self.mlp = Mlp(dim, feedforward_channels, drop=drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_2d_sincos_position_embedding(
    grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0, cls_token: bool = False
) -> torch.Tensor:
    """Fixed 2-d sin-cos position embedding (MoCo v3 / MAE), MMSelfSup 0.x's layout.

    Returns ``(1, grid_h * grid_w (+1 with cls_token), dim)`` float32 for the row-major patch
    tokens (token ``r * grid_w + c`` at row ``r``, column ``c``); with
    ``omega_k = 1 / temperature ** (k / (dim / 4))`` the four quarters of the channels are
    ``sin(r * omega)``, ``cos(r * omega)``, ``sin(c * omega)``, ``cos(c * omega)``; the
    cls-token row is zeros. Computed in float32 as 0.x's ``build_2d_sincos_position_embedding``
    (and MoCo v3's code), whose square grids give exactly this (0.x names the row index
    ``grid_w``); the official MAE code (and earlier versions of this function) put the column first,
    the transpose (a checkpoint keeps the embedding it was trained with: it is loaded as saved).
    ``dim`` must be divisible by 4.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs an embedding dim divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float32), torch.arange(grid_w, dtype=torch.float32), indexing="ij"
    )
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_r = rows.flatten()[:, None] * omega[None]
    out_c = cols.flatten()[:, None] * omega[None]
    emb = torch.cat([out_r.sin(), out_r.cos(), out_c.sin(), out_c.cos()], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def resize_pos_embed(
    pos_embed: torch.Tensor,
    src_shape: tuple[int, int],
    dst_shape: tuple[int, int],
    mode: str = "bicubic",
    num_extra_tokens: int = 1,
) -> torch.Tensor:
    """Resize a ``(1, extra + Hs*Ws, C)`` position embedding to ``(1, extra + Hd*Wd, C)``.

    The ``num_extra_tokens`` leading rows (cls token) are kept; the grid part is
    interpolated with ``mode`` (``align_corners=False``).
    """
    if tuple(src_shape) == tuple(dst_shape):
        return pos_embed
    extra, grid = pos_embed[:, :num_extra_tokens], pos_embed[:, num_extra_tokens:]
    c = grid.shape[-1]
    if grid.shape[1] != src_shape[0] * src_shape[1]:
        raise ValueError(
            f"position embedding has {grid.shape[1]} grid tokens, expected {src_shape[0]}x{src_shape[1]}"
        )
    grid = grid.reshape(1, src_shape[0], src_shape[1], c).permute(0, 3, 1, 2).float()
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic", "linear", "trilinear") else {}
    grid = F.interpolate(grid, size=tuple(dst_shape), mode=mode, **kwargs)
    grid = grid.permute(0, 2, 3, 1).reshape(1, dst_shape[0] * dst_shape[1], c).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)


def mask_to_token_weights(mask: torch.Tensor, grid: tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """A patch mask -> ``(N, Hp*Wp, 1)`` weights in ``x``'s dtype (1 = masked).

    ``mask`` is ``(N, Hp*Wp)``, ``(N, Hp, Wp)`` or a coarser ``(N, h, w)`` grid whose cells
    cover whole blocks of patches (``Hp % h == 0``, ``Wp % w == 0``), as SimMIM's mask
    generator makes (32 px mask patches over 4 px model patches).
    """
    n, length = x.shape[0], grid[0] * grid[1]
    if mask.dim() == 2 and mask.shape == (n, length):
        return mask.reshape(n, length, 1).to(x.dtype)
    if mask.dim() == 3 and mask.shape[0] == n:
        mh, mw = mask.shape[1:]
        if grid[0] % mh == 0 and grid[1] % mw == 0:
            mask = mask.repeat_interleave(grid[0] // mh, 1).repeat_interleave(grid[1] // mw, 2)
            return mask.reshape(n, length, 1).to(x.dtype)
    raise ValueError(
        f"mask of shape {tuple(mask.shape)} does not fit a batch of {n} with a {grid[0]}x{grid[1]} patch grid"
    )


def _adapt_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    module.adapt_state_dict(state_dict, prefix)  # type: ignore[operator]


def register_state_dict_adapter(module: nn.Module) -> None:
    """Run ``module.adapt_state_dict(state_dict, prefix)`` before every ``load_state_dict``
    that reaches ``module`` (resizing position embeddings, renaming keys). The hook is bound
    to the module the way torch binds it, so a ``copy.deepcopy`` (EMA teacher) adapts with
    its own copy."""
    module._register_load_state_dict_pre_hook(_adapt_hook, with_module=True)
