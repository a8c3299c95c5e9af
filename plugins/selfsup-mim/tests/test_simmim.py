"""SimMIM: the mask generator's coverage at patch granularity, the mask reaching the batch,
the masked-pixel L1 loss against hand computations, config errors, one epoch through selfsup-run."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from selfsup_core.testing import derive_config, read_metrics, run_selfsup
from selfsup_data.masks import SimMIMMaskGenerator
from selfsup_mim.heads import SimMIMHead
from selfsup_mim.necks import SimMIMNeck
from selfsup_mim.simmim import SimMIM
from selfsup_models.backbones.swin import SimMIMSwinTransformer
from selfsup_models.backbones.vision_transformer import VisionTransformer

REPO = Path(__file__).resolve().parents[3]
FASHION = REPO / "examples" / "configs" / "simmim_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
TINY_ARCH = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}


def tiny_vit_simmim() -> SimMIM:
    backbone = VisionTransformer(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1, with_cls_token=False,
                                 output_cls_token=False, use_mask_token=True)
    return SimMIM(backbone, SimMIMNeck(16, 2, out_channels=1), SimMIMHead(patch_size=2, encoder_in_channels=1))


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize(("input_size", "mask_patch", "model_patch", "ratio", "cells"),
                         [(28, 4, 4, 0.6, 30), (192, 32, 4, 0.6, 22), (32, 8, 2, 0.5, 8), (28, 4, 4, 0.75, 37)])
def test_mask_generator_covers_the_ratio_at_patch_granularity(input_size, mask_patch, model_patch, ratio, cells):
    torch.manual_seed(0)
    gen = SimMIMMaskGenerator(input_size=input_size, mask_patch_size=mask_patch, model_patch_size=model_patch,
                              mask_ratio=ratio)
    scale = mask_patch // model_patch
    side = input_size // mask_patch
    for _ in range(5):
        mask = gen(torch.zeros(1, input_size, input_size))["mask"]
        assert mask.dtype == torch.bool and mask.shape == (side * scale, side * scale)
        # every mask patch is all masked or all visible ...
        blocks = mask.reshape(side, scale, side, scale).permute(0, 2, 1, 3).reshape(side, side, -1)
        assert torch.all(blocks.all(-1) == blocks.any(-1))
        # ... and exactly ceil(ratio * mask patches) of them are masked
        assert int(blocks[..., 0].sum()) == cells
        assert int(mask.sum()) == cells * scale * scale


def test_the_mask_reaches_the_batch_through_the_dataset(tmp_path):
    from selfsup_core.build import build
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 8)
    dataset = build({
        "type": "OneViewDataset",
        "data_source": {"type": "NumpyArrays", "file": str(data)},
        "pipeline": [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True},
                     {"type": "SimMIMMaskGenerator", "input_size": 28, "mask_patch_size": 4, "model_patch_size": 4,
                      "mask_ratio": 0.6}],
    }, "datasets")
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["img"].shape == (4, 1, 28, 28)
    assert batch["mask"].shape == (4, 7, 7) and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(dim=(1, 2)).tolist() == [30] * 4
    model = tiny_simmim_28()
    losses = model(batch["img"], mode="train", mask=batch["mask"], label=batch["label"], idx=batch["idx"])
    assert torch.isfinite(losses["loss"])


def tiny_simmim_28() -> SimMIM:
    backbone = VisionTransformer(arch=TINY_ARCH, img_size=28, patch_size=4, in_channels=1, with_cls_token=False,
                                 output_cls_token=False, use_mask_token=True)
    return SimMIM(backbone, SimMIMNeck(16, 4, out_channels=1), SimMIMHead(patch_size=4, encoder_in_channels=1))


# ----------------------------------------------------------------------------- loss
def test_simmim_loss_counts_only_masked_pixels_hand_computed():
    # one 4x4 grey image, patch 2: the mask [[1, 0], [0, 0]] covers the top-left 2x2 pixels
    img = torch.tensor([[[[1.0, 2.0, 3.0, 4.0],
                          [5.0, 6.0, 7.0, 8.0],
                          [9.0, 1.0, 2.0, 3.0],
                          [4.0, 5.0, 6.0, 7.0]]]])
    rec = torch.zeros_like(img)
    mask = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.bool)
    # |1| + |2| + |5| + |6| = 14 over 4 masked pixels (+1e-5) / 1 channel
    loss = SimMIMHead(patch_size=2, encoder_in_channels=1)(img, rec, mask)["loss"]
    assert loss.item() == pytest.approx(14 / (4 + 1e-5))
    # errors on visible pixels do not count
    rec2 = rec.clone()
    rec2[..., 2:, :] = 100.0
    assert SimMIMHead(patch_size=2, encoder_in_channels=1)(img, rec2, mask)["loss"].item() == pytest.approx(3.5, rel=1e-5)


def test_simmim_loss_divides_by_channels():
    # 2 channels, 2x2 image, patch 1, only pixel (0, 1) masked: errors 3 (channel 0) and 5 (channel 1)
    img = torch.zeros(1, 2, 2, 2)
    rec = torch.zeros(1, 2, 2, 2)
    rec[0, 0, 0, 1], rec[0, 1, 0, 1] = 3.0, -5.0
    rec[0, :, 1, 1] = 9.0                                  # visible: ignored
    mask = torch.tensor([[[0, 1], [0, 0]]])
    loss = SimMIMHead(patch_size=1, encoder_in_channels=2)(img, rec, mask)["loss"]
    assert loss.item() == pytest.approx((3 + 5) / (1 + 1e-5) / 2)


def test_simmim_neck_pixel_shuffles_to_image_size():
    neck = SimMIMNeck(in_channels=8, encoder_stride=4, out_channels=3)
    assert neck([torch.randn(2, 8, 3, 5)])[0].shape == (2, 3, 12, 20)


# ----------------------------------------------------------------------------- algorithm
def test_masked_patches_see_the_mask_token_and_it_learns():
    torch.manual_seed(0)
    model = tiny_vit_simmim()
    img = torch.randn(2, 1, 8, 8)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    losses = model(img, mode="train", mask=mask)
    assert set(losses) == {"loss"}
    losses["loss"].backward()
    assert model.backbone.mask_token.grad.abs().sum() > 0
    # with every patch visible the mask token takes no part
    model.zero_grad()
    out = model.reconstruct(img, torch.zeros_like(mask))
    out["img_rec"].sum().backward()
    assert model.backbone.mask_token.grad is None or model.backbone.mask_token.grad.abs().sum() == 0


def test_simmim_with_a_swin_backbone():
    torch.manual_seed(0)
    backbone = SimMIMSwinTransformer(arch={"embed_dims": 8, "depths": [1, 1], "num_heads": [1, 2]}, img_size=16,
                                     patch_size=2, in_channels=3, window_size=4, out_indices=[1])
    model = SimMIM(backbone, SimMIMNeck(16, 4, out_channels=3), SimMIMHead(patch_size=2, encoder_in_channels=3))
    mask = SimMIMMaskGenerator(input_size=16, mask_patch_size=4, model_patch_size=2, mask_ratio=0.5).generate()
    loss = model(torch.randn(2, 3, 16, 16), mode="train", mask=mask.expand(2, -1, -1))["loss"]
    assert torch.isfinite(loss)
    loss.backward()


def test_extract_without_a_mask():
    feats = tiny_vit_simmim().eval()(torch.randn(3, 1, 8, 8), mode="extract")
    assert feats[-1].shape == (3, 16, 4, 4)


def test_config_errors_are_named():
    backbone = VisionTransformer(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1)
    with pytest.raises(ValueError, match="no mask token"):
        SimMIM(backbone, SimMIMNeck(16, 2, 1), SimMIMHead(2, 1))
    with pytest.raises(ValueError, match="model.neck.in_channels = 8"):
        SimMIM(tiny_vit_simmim().backbone, SimMIMNeck(8, 2, 1), SimMIMHead(2, 1))
    with pytest.raises(ValueError, match="no 'mask'"):
        tiny_vit_simmim()(torch.randn(1, 1, 8, 8), mode="train")
    with pytest.raises(ValueError, match="model_patch_size"):
        SimMIMHead(patch_size=4, encoder_in_channels=1)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8),
                                                         torch.zeros(1, 4, 4))


# ----------------------------------------------------------------------------- end to end
def test_one_epoch_of_the_fashion_config_through_selfsup_run(tmp_path):
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 256)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(
        FASHION, tmp_path / "simmim.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 16, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.workers_per_gpu": 0,
                "model.backbone.arch": {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64},
                "model.neck.in_channels": 32,
                "optimizer.lr": 2e-3, "lr_config.warmup_iters": 1, "lr_config.warmup_by_epoch": False},
    )
    wd = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", wd, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (wd / "latest.pth").exists()
    losses = [r["loss"] for r in read_metrics(wd, "train")]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    assert read_metrics(wd, "eval")
