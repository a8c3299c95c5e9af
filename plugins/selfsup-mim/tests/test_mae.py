"""MAE: masking, un-shuffling, the masked-patch loss against hand computations, config errors,
and one epoch through selfsup-run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from selfsup_core.testing import derive_config, read_metrics, run_selfsup
from selfsup_mim.heads import MAEPretrainHead, patchify, unpatchify
from selfsup_mim.mae import MAE
from selfsup_mim.necks import MAEPretrainDecoder
from selfsup_models.backbones.vision_transformer import MAEViT, VisionTransformer

REPO = Path(__file__).resolve().parents[3]
FASHION = REPO / "examples" / "configs" / "mae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
TINY_ARCH = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}


def tiny_mae(mask_ratio: float = 0.75, norm_pix: bool = False) -> MAE:
    backbone = MAEViT(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1, mask_ratio=mask_ratio)
    neck = MAEPretrainDecoder(num_patches=16, patch_size=2, in_chans=1, embed_dim=16, decoder_embed_dim=8,
                              decoder_depth=1, decoder_num_heads=2)
    return MAE(backbone, neck, MAEPretrainHead(norm_pix=norm_pix, patch_size=2))


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize(("length", "ratio", "kept"), [(16, 0.75, 4), (49, 0.75, 12), (10, 0.5, 5), (7, 0.0, 7)])
def test_random_masking_keeps_exactly_the_configured_ratio(length, ratio, kept):
    x = torch.arange(3 * length, dtype=torch.float32).reshape(3, length, 1).expand(-1, -1, 4).contiguous()
    x_kept, mask, ids_restore = VisionTransformer.random_masking(x, ratio)
    assert x_kept.shape == (3, kept, 4)
    # int(L * (1 - ratio)) visible, the rest removed, in every sample
    assert mask.sum(dim=1).tolist() == [length - kept] * 3
    # the kept tokens are exactly those where mask == 0, each once
    for n in range(3):
        visible = x[n, mask[n] == 0, 0]
        assert sorted(x_kept[n, :, 0].tolist()) == sorted(visible.tolist())


def test_ids_restore_unshuffles_to_the_original_order():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 3)
    x_kept, mask, ids_restore = VisionTransformer.random_masking(x, 0.75)
    # the removed tokens in shuffled order are the complement of the kept ones
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    removed = torch.gather(x, 1, ids_shuffle[:, 4:, None].expand(-1, -1, 3))
    restored = torch.gather(torch.cat([x_kept, removed], dim=1), 1, ids_restore[:, :, None].expand(-1, -1, 3))
    assert torch.equal(restored, x)
    assert torch.equal(mask, (ids_restore >= 4).float())


def test_decoder_puts_visible_tokens_back_and_mask_tokens_in_the_holes():
    """A decoder reduced to its un-shuffle (identity embedding/prediction, no blocks, zero
    position embedding): output position i is the visible token of patch i, or the mask token."""
    torch.manual_seed(1)
    decoder = MAEPretrainDecoder(num_patches=16, patch_size=2, in_chans=1, embed_dim=4, decoder_embed_dim=4,
                                 decoder_depth=0, decoder_num_heads=1)
    with torch.no_grad():
        decoder.decoder_embed.weight.copy_(torch.eye(4))
        decoder.decoder_embed.bias.zero_()
        decoder.decoder_pos_embed.zero_()
        decoder.mask_token.fill_(-7.0)
    decoder.decoder_norm = nn.Identity()
    decoder.decoder_pred = nn.Identity()
    tokens = torch.randn(2, 16, 4)
    x_kept, mask, ids_restore = VisionTransformer.random_masking(tokens, 0.75)
    cls = torch.full((2, 1, 4), 99.0)
    pred = decoder([torch.cat([cls, x_kept], dim=1)], ids_restore)[0]
    assert pred.shape == (2, 16, 4)
    visible = mask == 0
    assert torch.equal(pred[visible], tokens[visible])
    assert torch.all(pred[~visible] == -7.0)


def test_maevit_forward_returns_latent_mask_and_restore_ids():
    model = tiny_mae()
    latent, mask, ids_restore = model.backbone(torch.randn(2, 1, 8, 8))
    assert latent.shape == (2, 1 + 4, 16)          # cls + 16 * 0.25 visible patches
    assert mask.shape == ids_restore.shape == (2, 16)
    assert mask.sum().item() == 2 * 12


# ----------------------------------------------------------------------------- loss
def test_patchify_order_and_inverse():
    img = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    patches = patchify(img, 2)
    assert patches.shape == (1, 4, 8)
    # first patch = rows 0-1, cols 0-1, pixel-major then channel: (0,16) (1,17) (4,20) (5,21)
    assert patches[0, 0].tolist() == [0, 16, 1, 17, 4, 20, 5, 21]
    assert torch.equal(unpatchify(patches, 2, (2, 2), 2), img)


def test_mae_loss_counts_only_masked_patches_hand_computed():
    # one 2x4 grey image, patch 2 -> two patches: [1, 2, 5, 6] and [3, 4, 7, 8]
    img = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]])
    pred = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [3.0, 5.0, 7.0, 9.0]]])
    mask = torch.tensor([[0.0, 1.0]])              # only patch 1 was removed
    # patch 1: errors (3-3, 5-4, 7-7, 9-8) -> squares 0, 1, 0, 1 -> mean 0.5; patch 0 ignored
    loss = MAEPretrainHead(norm_pix=False, patch_size=2)(img, pred, mask)["loss"]
    assert loss.item() == pytest.approx(0.5)
    # both removed: patch 0 errors 1, 2, 5, 6 -> squares mean (1+4+25+36)/4 = 16.5; (16.5 + 0.5) / 2
    both = MAEPretrainHead(norm_pix=False, patch_size=2)(img, pred, torch.ones(1, 2))["loss"]
    assert both.item() == pytest.approx(8.5)
    # a huge error on a visible patch changes nothing
    pred2 = pred.clone()
    pred2[0, 0] = 1000.0
    assert MAEPretrainHead(patch_size=2)(img, pred2, mask)["loss"].item() == pytest.approx(0.5)


def test_mae_norm_pix_target_hand_computed():
    img = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]])
    # patch 1 = [3, 4, 7, 8]: mean 5.5, unbiased var (6.25 + 2.25 + 2.25 + 6.25) / 3 = 17 / 3
    # (0.x and the official MAE: torch's default Tensor.var)
    std = math.sqrt(17 / 3 + 1e-6)
    target = [(v - 5.5) / std for v in (3.0, 4.0, 7.0, 8.0)]
    pred = torch.zeros(1, 2, 4)
    expected = sum(t * t for t in target) / 4      # zero prediction: mean of squared targets
    loss = MAEPretrainHead(norm_pix=True, patch_size=2)(img, pred, torch.tensor([[0.0, 1.0]]))["loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(0.75, rel=1e-5)  # (n - 1) / n with the unbiased variance


def test_mae_forward_train_loss_backpropagates_to_encoder_and_decoder():
    torch.manual_seed(0)
    model = tiny_mae(norm_pix=True)
    losses = model(torch.randn(4, 1, 8, 8), mode="train")
    assert set(losses) == {"loss"} and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.neck.mask_token.grad.abs().sum() > 0
    assert model.neck.decoder_pos_embed.grad is None        # fixed sin-cos


def test_mae_extract_gives_unmasked_features():
    model = tiny_mae().eval()
    feats = model(torch.randn(3, 1, 8, 8), mode="extract")
    patch_map, cls = feats[-1]
    assert patch_map.shape == (3, 16, 4, 4) and cls.shape == (3, 16)


def test_reconstruct_returns_prediction_and_mask():
    out = tiny_mae().reconstruct(torch.randn(2, 1, 8, 8))
    assert out["pred"].shape == (2, 16, 4) and out["mask"].shape == (2, 16)


# ----------------------------------------------------------------------------- config errors
def test_mismatched_num_patches_is_named():
    backbone = MAEViT(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1)
    neck = MAEPretrainDecoder(num_patches=4, patch_size=2, in_chans=1, embed_dim=16, decoder_embed_dim=8,
                              decoder_depth=1, decoder_num_heads=2)
    with pytest.raises(ValueError, match="model.neck.num_patches = 4 but the backbone has 16"):
        MAE(backbone, neck, MAEPretrainHead(patch_size=2))


def test_a_plain_vit_backbone_is_refused():
    class NotMAE(nn.Module):
        pass
    with pytest.raises(ValueError, match='backbone must be an MAEViT'):
        MAE(NotMAE(), nn.Identity(), MAEPretrainHead())


def test_decoder_rejects_a_non_square_patch_count():
    with pytest.raises(ValueError, match="square"):
        MAEPretrainDecoder(num_patches=10)


def test_core_reports_a_misspelt_decoder_key():
    with pytest.raises(ConfigError, match="decoder_dept"):
        build({"type": "MAEPretrainDecoder", "decoder_dept": 2}, "necks")


# ----------------------------------------------------------------------------- end to end
def test_one_epoch_of_the_fashion_config_through_selfsup_run(tmp_path):
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 256)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(
        FASHION, tmp_path / "mae.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 16, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.workers_per_gpu": 0,
                "model.backbone.arch": {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64},
                "model.neck.embed_dim": 32, "model.neck.decoder_embed_dim": 32, "model.neck.decoder_depth": 1,
                "optimizer.lr": 2e-3, "lr_config.warmup_iters": 1, "lr_config.warmup_by_epoch": False},
    )
    wd = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", wd, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (wd / "latest.pth").exists()
    losses = [r["loss"] for r in read_metrics(wd, "train")]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    evals = read_metrics(wd, "eval")
    assert evals and any("knn" in k.lower() for k in evals[-1])
