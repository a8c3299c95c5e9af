"""Small MMSelfSup 0.x fidelity checks against hand computations of 0.x's code: Barlow Twins
head in float64, Sinkhorn-Knopp keeping the input dtype, the 2-d sin-cos position embedding
layout, and 0.x's SwAV neck ``bn`` alias in checkpoints."""
from __future__ import annotations

import torch
from torch import nn

from selfsup_models.backbones.transformer_layers import build_2d_sincos_position_embedding
from selfsup_models.heads.latent import LatentCrossCorrelationHead
from selfsup_models.heads.swav import sinkhorn
from selfsup_models.necks import SwAVNeck


def test_barlow_twins_head_runs_in_float64_and_matches_0x_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, 4, generator=g, dtype=torch.float64)
    head = LatentCrossCorrelationHead(4, lambd=0.5).double()
    loss = head(a, b)["loss"]
    assert loss.dtype == torch.float64

    def bn(x):  # BatchNorm1d(affine=False) in training mode: biased batch variance, eps 1e-5
        return (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)

    c = bn(a).T @ bn(b) / 6
    on = ((torch.diagonal(c) - 1) ** 2).sum()
    off = (c ** 2).sum() - (torch.diagonal(c) ** 2).sum()
    torch.testing.assert_close(loss, on + 0.5 * off, rtol=1e-12, atol=1e-12)


def _mmselfsup_sinkhorn(out: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """0.x's ``distributed_sinkhorn`` on one process."""
    q = torch.exp(out / epsilon).t()
    batch, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / batch
    return (q * batch).t()


def test_sinkhorn_keeps_float64_and_matches_0x():
    scores = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.1
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert q.dtype == torch.float64
    torch.testing.assert_close(q, _mmselfsup_sinkhorn(scores, 0.05, 3), rtol=1e-12, atol=1e-14)
    assert sinkhorn(scores.float()).dtype == torch.float32
    assert sinkhorn(scores.to(torch.bfloat16)).dtype == torch.float32


def _mmselfsup_sincos(side: int, dim: int, cls_token: bool) -> torch.Tensor:
    """0.x's ``build_2d_sincos_position_embedding((side, side), dim, cls_token)``, by hand."""
    grid_w, grid_h = torch.meshgrid(torch.arange(side, dtype=torch.float32),
                                    torch.arange(side, dtype=torch.float32), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    out_w = torch.einsum("m,d->md", grid_w.flatten(), omega)
    out_h = torch.einsum("m,d->md", grid_h.flatten(), omega)
    emb = torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]
    if cls_token:
        emb = torch.cat([torch.zeros(1, 1, dim), emb], dim=1)
    return emb


def test_sincos_position_embedding_is_0x_layout():
    for side, dim, cls in ((4, 8, True), (14, 32, False), (7, 16, True)):
        ours = build_2d_sincos_position_embedding(side, side, dim, cls_token=cls)
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, _mmselfsup_sincos(side, dim, cls), rtol=0, atol=1e-6)
    # the row index drives the first half: token (r=1, c=0) of a 4x4 grid is row 4
    emb = build_2d_sincos_position_embedding(4, 4, 8)
    assert emb[0, 4, 0] == torch.sin(torch.tensor(1.0)) and emb[0, 4, 4] == 0.0


def test_swav_neck_loads_0x_checkpoint_with_bn_alias(tmp_path):
    # 0.x's SwAVNeck registers its BN as `bn` and as `projection_neck.1`: both in the state dict
    source = SwAVNeck(8, 6, 4, norm_cfg={"type": "BN"})
    with torch.no_grad():
        source.projection_neck[1].weight.uniform_()
        source.projection_neck[1].running_mean.uniform_()
    state = {f"neck.{k}": v.clone() for k, v in source.state_dict().items()}
    for k, v in source.projection_neck[1].state_dict().items():
        state[f"neck.bn.{k}"] = v.clone()
    state["backbone.x"] = torch.zeros(1)
    path = tmp_path / "swav_0x.pth"
    torch.save({"state_dict": state}, path)

    class Algo(nn.Module):
        def __init__(self):
            super().__init__()
            self.neck = SwAVNeck(8, 6, 4, norm_cfg={"type": "BN"})

    from selfsup_models.init import apply_init_cfg

    model = Algo()
    report = apply_init_cfg(model, {"type": "Pretrained", "checkpoint": str(path)})
    assert report.unexpected == ["backbone.x"]           # no neck.bn.* left unexplained
    assert not report.missing
    for k, v in source.state_dict().items():
        assert torch.equal(model.neck.state_dict()[k], v), k
    # a checkpoint with only the alias still fills the projector's norm
    only_alias = {k: v for k, v in state.items() if not k.startswith("neck.projection_neck.1.")}
    torch.save(only_alias, path)
    model = Algo()
    report = apply_init_cfg(model, {"type": "Pretrained", "checkpoint": str(path)})
    assert not report.missing
    assert torch.equal(model.neck.projection_neck[1].weight, source.projection_neck[1].weight)


def test_0x_vit_checkpoint_keeps_its_sincos_embedding_which_is_ours(tmp_path):
    """A 0.x ViT checkpoint (mmcls key names) loaded through init_cfg keeps its position
    embedding, and a freshly built sin-cos ViT has the same one (0.x's layout)."""
    from selfsup_models.backbones.vision_transformer import VisionTransformer

    arch = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}
    fresh = VisionTransformer(arch=arch, img_size=16, patch_size=4, pos_embed_type="sincos")
    zero_x = _mmselfsup_sincos(4, 16, cls_token=True)
    torch.testing.assert_close(fresh.pos_embed.data, zero_x, rtol=0, atol=1e-6)
    state = {"backbone.pos_embed": zero_x.clone(), "backbone.cls_token": torch.zeros(1, 1, 16),
             "backbone.patch_embed.projection.weight": torch.randn(16, 3, 4, 4),
             "backbone.patch_embed.projection.bias": torch.zeros(16)}
    torch.save({"state_dict": state}, tmp_path / "vit_0x.pth")
    loaded = VisionTransformer(arch=arch, img_size=16, patch_size=4, pos_embed_type="sincos",
                               init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "vit_0x.pth"),
                                         "prefix": "backbone."})
    assert torch.equal(loaded.pos_embed.data, zero_x)
    assert torch.equal(loaded.patch_embed.proj.weight.data, state["backbone.patch_embed.projection.weight"])
