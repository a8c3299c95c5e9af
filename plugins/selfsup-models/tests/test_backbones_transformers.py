from __future__ import annotations

import sys

import pytest
import torch

from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from selfsup_models.backbones.swin import _shift_mask
from selfsup_models.backbones.transformer_layers import build_2d_sincos_position_embedding, resize_pos_embed

TINY = {"embed_dims": 32, "num_layers": 4, "num_heads": 2, "feedforward_channels": 64}
SWIN_TINY = {"embed_dims": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}


def _vit(**cfg):
    base = {"type": "VisionTransformer", "arch": TINY, "img_size": 32, "patch_size": 8}
    return build({**base, **cfg}, "backbones")


# ----------------------------------------------------------------------------- ViT


def test_vit_named_arch_and_outputs_with_cls_token():
    model = build({"type": "VisionTransformer", "arch": "tiny", "img_size": 32, "patch_size": 16,
                   "out_indices": [0, 5, -1]}, "backbones").eval()
    assert model.embed_dims == 192 and len(model.blocks) == 12 and model.out_channels == 192
    outs = model(torch.randn(2, 3, 32, 32))
    assert len(outs) == 3
    for patch_map, cls in outs:
        assert patch_map.shape == (2, 192, 2, 2) and cls.shape == (2, 192)


def test_vit_output_without_cls():
    model = _vit(out_indices=[1, 3], output_cls_token=False).eval()
    outs = model(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 4, 4), (2, 32, 4, 4)]
    no_cls = _vit(with_cls_token=False, output_cls_token=False).eval()
    assert no_cls.cls_token is None and no_cls.pos_embed.shape == (1, 16, 32)
    assert no_cls(torch.randn(1, 3, 32, 32))[0].shape == (1, 32, 4, 4)
    with pytest.raises(ConfigError, match="output_cls_token=true needs with_cls_token=true"):
        _vit(with_cls_token=False)


def test_vit_final_norm_on_last_output():
    model = _vit(out_indices=[-1], output_cls_token=False).eval()
    tokens = model(torch.randn(2, 3, 32, 32))[0].flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_random_masking_keeps_tokens_and_ids_restore_unshuffles():
    torch.manual_seed(0)
    from selfsup_models.backbones import VisionTransformer

    x = torch.randn(3, 16, 5)
    kept, mask, ids_restore = VisionTransformer.random_masking(x, 0.75)
    assert kept.shape == (3, 4, 5)
    assert mask.shape == (3, 16) and torch.equal(mask.sum(1), torch.full((3,), 12.0))
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle.unsqueeze(-1).expand(-1, -1, 5))
    assert torch.equal(shuffled[:, :4], kept)
    restored = torch.gather(shuffled, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 5))
    assert torch.equal(restored, x)
    # the kept tokens are exactly those with mask 0
    for n in range(3):
        kept_rows = x[n][mask[n] == 0]
        assert sorted(map(tuple, kept_rows.tolist())) == sorted(map(tuple, kept[n].tolist()))


def test_forward_masked_and_maevit():
    model = _vit().eval()
    latent, mask, ids_restore = model.forward_masked(torch.randn(2, 3, 32, 32), mask_ratio=0.75)
    assert latent.shape == (2, 1 + 4, 32) and mask.shape == (2, 16) and ids_restore.shape == (2, 16)
    mae = build({"type": "MAEViT", "arch": TINY, "img_size": 32, "patch_size": 8, "mask_ratio": 0.5}, "backbones")
    assert not mae.pos_embed.requires_grad  # fixed sin-cos by default
    latent, mask, _ = mae(torch.randn(2, 3, 32, 32))
    assert latent.shape == (2, 1 + 8, 32) and mask.sum().item() == 16
    assert mae.forward_features(torch.randn(1, 3, 32, 32))[0][0].shape == (1, 32, 4, 4)


def test_simmim_mask_token():
    model = _vit(use_mask_token=True, output_cls_token=False).eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    x = torch.cat([a, b])
    all_masked = model(x, mask=torch.ones(2, 4, 4))[0]
    torch.testing.assert_close(all_masked[0], all_masked[1])  # nothing of the images is left
    none_masked = model(x, mask=torch.zeros(2, 16))[0]
    torch.testing.assert_close(none_masked, model(x)[0])
    coarse = model(x, mask=torch.tensor([[[1, 0], [0, 0]]] * 2))[0]  # 2x2 grid over 4x4 patches
    assert coarse.shape == (2, 32, 4, 4) and not torch.allclose(coarse, none_masked)
    with pytest.raises(ValueError, match="needs use_mask_token=true"):
        _vit()(x, mask=torch.ones(2, 16))
    with pytest.raises(ValueError, match=r"mask of shape \(2, 3, 3\) does not fit"):
        model(x, mask=torch.ones(2, 3, 3))


def test_pos_embed_interpolation_for_other_input_sizes():
    model = _vit(output_cls_token=False).eval()
    assert model(torch.randn(1, 3, 48, 64))[0].shape == (1, 32, 6, 8)
    pos = torch.randn(1, 1 + 16, 32)
    resized = resize_pos_embed(pos, (4, 4), (6, 8), "bicubic", 1)
    assert resized.shape == (1, 1 + 48, 32)
    assert torch.equal(resized[:, 0], pos[:, 0])


def test_pretrained_with_other_grid_and_mmcls_names(tmp_path):
    src = _vit()
    state = src.state_dict()
    path = tmp_path / "vit32.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)
    dst = _vit(img_size=48, init_cfg={"type": "Pretrained", "checkpoint": str(path), "prefix": "backbone."})
    report = dst.init_report
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert dst.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(dst.pos_embed.data, resize_pos_embed(state["pos_embed"], (4, 4), (6, 6), "bicubic", 1))
    torch.testing.assert_close(dst.blocks[2].mlp.fc1.weight, src.blocks[2].mlp.fc1.weight)
    # a plain load_state_dict resizes too
    again = _vit(img_size=48)
    again.load_state_dict(state)
    torch.testing.assert_close(again.pos_embed.data, dst.pos_embed.data)

    renames = {"patch_embed.proj.": "patch_embed.projection.", "norm1.": "ln1.", "norm2.": "ln2.",
               "mlp.fc1.": "ffn.layers.0.0.", "mlp.fc2.": "ffn.layers.1."}
    mmcls = {}
    for key, value in state.items():
        new = key.replace("blocks.", "layers.")
        for a, b in renames.items():
            new = new.replace(a, b)
        if new.startswith("norm."):
            new = "ln1." + new[len("norm."):]
        mmcls[new] = value
    assert "layers.0.ffn.layers.0.0.weight" in mmcls and "ln1.weight" in mmcls
    mm_path = tmp_path / "mmcls.pth"
    torch.save(mmcls, mm_path)
    converted = _vit(init_cfg={"type": "Pretrained", "checkpoint": str(mm_path), "strict": True})
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(converted.eval()(x)[0][1], src.eval()(x)[0][1])


def test_stop_grad_conv1_and_frozen_stages():
    model = _vit(stop_grad_conv1=True).train()
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    model(torch.randn(2, 3, 32, 32))[0][1].sum().backward()
    assert model.patch_embed.proj.weight.grad is None and model.blocks[0].attn.qkv.weight.grad is not None

    frozen = _vit(frozen_stages=2, drop_rate=0.1).train()
    assert not frozen.cls_token.requires_grad and not frozen.pos_embed.requires_grad
    assert all(not p.requires_grad for b in frozen.blocks[:2] for p in b.parameters())
    assert all(p.requires_grad for p in frozen.blocks[2].parameters())
    assert not frozen.blocks[1].training and frozen.blocks[2].training and not frozen.drop_after_pos.training


def test_sincos_position_embedding():
    emb = build_2d_sincos_position_embedding(2, 3, 8, cls_token=True)
    assert emb.shape == (1, 7, 8)
    assert torch.equal(emb[0, 0], torch.zeros(8))
    # grid position (h=0, w=0): sin parts 0, cos parts 1
    assert torch.equal(emb[0, 1], torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]))
    # position (h=1, w=2), first frequency is 1: sin(1), cos(1), sin(2), cos(2) (0.x: the row first)
    row = emb[0, 1 + 5]
    torch.testing.assert_close(row[[0, 2, 4, 6]], torch.tensor([1.0, 1.0, 2.0, 2.0]).sin().mul(
        torch.tensor([1.0, 0, 1, 0])) + torch.tensor([1.0, 1.0, 2.0, 2.0]).cos().mul(torch.tensor([0.0, 1, 0, 1])))
    model = _vit(pos_embed_type="sincos")
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed.data, build_2d_sincos_position_embedding(4, 4, 32, cls_token=True))


def test_vit_config_errors():
    with pytest.raises(ConfigError, match="unknown arch 'tinny'"):
        _vit(arch="tinny")
    with pytest.raises(ConfigError, match="out_indices entry 4 is out of range for 4 layers"):
        _vit(out_indices=[4])
    with pytest.raises(ConfigError, match=r"did you mean 'patch_size'\?"):
        _vit(patchsize=4)


# ----------------------------------------------------------------------------- Swin


def _swin(**cfg):
    base = {"type": "SwinTransformer", "arch": SWIN_TINY, "img_size": 64, "window_size": 4, "drop_path_rate": 0.0}
    return build({**base, **cfg}, "backbones")


def test_swin_shapes_every_out_index():
    model = _swin(out_indices=[0, 1, 2, 3]).eval()
    outs = model(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4), (2, 128, 2, 2)]
    assert model.out_channels == 128 and model.feature_channels == (16, 32, 64, 128)
    # sizes that need window padding
    outs = model(torch.randn(1, 3, 40, 56))
    assert [tuple(o.shape[2:]) for o in outs] == [(10, 14), (5, 7), (3, 4), (2, 2)]
    from selfsup_models.backbones.swin import _resolve_arch

    assert _resolve_arch("t", "SwinTransformer") == {"embed_dims": 96, "depths": (2, 2, 6, 2),
                                                    "num_heads": (3, 6, 12, 24)}
    with pytest.raises(ConfigError, match="unknown arch 'tiniest'"):
        _swin(arch="tiniest")


def test_shift_mask_separates_rolled_regions():
    mask = _shift_mask(4, 4, 2, 1, torch.device("cpu"))
    assert mask.shape == (4, 4, 4)
    assert torch.equal(mask[0], torch.zeros(4, 4))  # top-left window: one region
    assert (mask[3] == -100).sum() > 0  # bottom-right window mixes rolled-in regions
    assert torch.equal(mask, mask.transpose(1, 2))


def test_simmim_swin_mask_token():
    model = build({"type": "SimMIMSwinTransformer", "arch": SWIN_TINY, "img_size": 32, "window_size": 2,
                   "drop_path_rate": 0.0}, "backbones").eval()
    assert model.mask_token is not None
    x = torch.randn(2, 3, 32, 32)
    out = model(x, mask=torch.ones(2, 8, 8))[0]
    assert out.shape == (2, 128, 1, 1)
    torch.testing.assert_close(out[0], out[1])
    coarse = model(x, mask=torch.tensor([[[1, 0], [0, 1]], [[0, 0], [0, 0]]]))[0]
    torch.testing.assert_close(coarse[1], model(x)[0][1])
    with pytest.raises(ValueError, match="needs use_mask_token=true"):
        _swin()(torch.randn(1, 3, 64, 64), mask=torch.ones(1, 16, 16))


def test_swin_frozen_stages_and_checkpoint_norm(tmp_path):
    model = _swin(frozen_stages=2, out_indices=[1, 3]).train()
    assert all(not p.requires_grad for p in model.patch_embed.parameters())
    assert all(not p.requires_grad for p in model.layers[1].parameters())
    assert all(not p.requires_grad for p in model.norm1.parameters())
    assert all(p.requires_grad for p in model.layers[2].parameters())
    assert not model.layers[0].training and model.layers[2].training

    src = _swin()
    state = dict(src.state_dict())
    state["norm.weight"] = state.pop("norm3.weight")
    state["norm.bias"] = state.pop("norm3.bias")
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    path = tmp_path / "simmim.pth"
    torch.save({"model": state}, path)
    dst = _swin(init_cfg={"type": "Pretrained", "checkpoint": str(path), "strict": True})
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst.eval()(x)[0], src.eval()(x)[0])


# ----------------------------------------------------------------------------- timm


def test_timm_backbone_without_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed: import timm fails
    with pytest.raises(ConfigError, match="pip install timm"):
        build({"type": "TimmBackbone", "model_name": "resnet18"}, "backbones")


def test_timm_backbone_with_timm():
    pytest.importorskip("timm")
    model = build({"type": "TimmBackbone", "model_name": "resnet18", "features_only": True,
                   "out_indices": [3, 4]}, "backbones").eval()
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 512] and model.out_channels == 512
    plain = build({"type": "TimmBackbone", "model_name": "resnet18"}, "backbones").eval()
    assert plain(torch.randn(1, 3, 64, 64))[0].shape == (1, 512, 2, 2)
