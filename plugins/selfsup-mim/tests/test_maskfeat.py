"""MaskFeat: the HOG target against a direct numpy implementation of the same definition, the
masked-patch L2 loss against a hand computation, the block-wise mask, bad input as one line
(exit 2), and a short run of the Fashion-MNIST config through selfsup-run."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup_core.cli import main
from selfsup_core.testing import derive_config, read_metrics
from selfsup_mim.hog import HOGGenerator
from selfsup_mim.maskfeat import MaskFeat, MaskFeatMaskGenerator, MaskFeatPretrainHead, MaskFeatViT

REPO = Path(__file__).resolve().parents[3]
FASHION = REPO / "examples" / "configs" / "maskfeat_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
TINY_ARCH = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}


# ----------------------------------------------------------------------------- HOG
def numpy_hog(img: np.ndarray, nbins: int, cell: int, window: int, patch: int) -> np.ndarray:
    """HOG by the definition, one pixel at a time: Sobel gradients with reflect padding,
    orientation bin floor(atan2(gx, gy) / pi * nbins) mod nbins, magnitude x a tiled Gaussian
    (std window // 2, summing to 1), summed per cell, L2-normalised per cell and channel, then
    gathered per patch as (channel, bin, cell row, cell column)."""
    c, h, w = img.shape
    pad = np.pad(img.astype(np.float64), ((0, 0), (1, 1), (1, 1)), mode="reflect")
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
    n = (np.arange(window) - (window - 1) / 2) / (window // 2)
    g1 = np.exp(-0.5 * n ** 2)
    g = np.outer(g1, g1)
    g /= g.sum()
    hist = np.zeros((c, nbins, h // cell, w // cell))
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                win = pad[ch, y:y + 3, x:x + 3]
                # Sobel: rows (1, 2, 1) of left - right, columns (1, 2, 1) of top - bottom
                gx = sum(sobel[r, 0] * (win[r, 0] - win[r, 2]) for r in range(3))
                gy = sum(sobel.T[0, k] * (win[0, k] - win[2, k]) for k in range(3))
                magnitude = math.sqrt(gx * gx + gy * gy) * g[y % window, x % window]
                b = math.floor(math.atan2(gx, gy) / math.pi * nbins) % nbins
                hist[ch, b, y // cell, x // cell] += magnitude
    hist /= np.maximum(np.sqrt((hist ** 2).sum(axis=1, keepdims=True)), 1e-12)
    u = patch // cell
    out = []
    for py in range(h // patch):
        for px in range(w // patch):
            block = hist[:, :, py * u:(py + 1) * u, px * u:(px + 1) * u]
            out.append(block.reshape(-1))
    return np.stack(out)


@pytest.mark.parametrize(("channels", "size", "nbins", "cell", "window", "patch"),
                         [(3, 32, 9, 8, 16, 16), (1, 16, 9, 2, 4, 4), (2, 12, 6, 3, 6, 6)])
def test_hog_matches_a_direct_numpy_implementation(channels, size, nbins, cell, window, patch):
    rng = np.random.default_rng(channels * size)
    imgs = rng.standard_normal((2, channels, size, size)).astype(np.float32)
    hog = HOGGenerator(nbins=nbins, pool=cell, gaussian_window=window, patch_size=patch, in_channels=channels)
    out = hog(torch.from_numpy(imgs))
    assert out.shape == (2, (size // patch) ** 2, channels * nbins * (patch // cell) ** 2) == (2, *out.shape[1:])
    assert hog.out_dim == out.shape[-1]
    for i in range(2):
        expected = numpy_hog(imgs[i], nbins, cell, window, patch)
        np.testing.assert_allclose(out[i].numpy(), expected, atol=2e-5, rtol=1e-5)


def test_imagenet_hog_is_108_per_patch():
    assert HOGGenerator()(torch.zeros(1, 3, 224, 224)).shape == (1, 196, 108)


# ----------------------------------------------------------------------------- loss
def test_loss_is_mse_over_masked_patches_only_hand_computed():
    head = MaskFeatPretrainHead(embed_dim=2, hog_dim=2)
    with torch.no_grad():
        head.head.weight.copy_(torch.eye(2))
        head.head.bias.zero_()
    latent = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]]])
    hog = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    # patch 0: ((1-0)^2 + (2-0)^2) / 2 = 2.5 ; patch 1: ((3-1)^2 + (4-1)^2) / 2 = 6.5 ; patch 2 unmasked
    assert head(latent, hog, mask)["loss"].item() == pytest.approx((2.5 + 6.5) / 2)


def tiny_maskfeat() -> MaskFeat:
    backbone = MaskFeatViT(arch=TINY_ARCH, img_size=8, patch_size=4, in_channels=1, output_cls_token=False)
    return MaskFeat(backbone, MaskFeatPretrainHead(embed_dim=16, hog_dim=36),
                    hog_para={"nbins": 9, "pool": 2, "gaussian_window": 4})


def test_the_algorithm_predicts_hog_of_the_masked_patches():
    torch.manual_seed(0)
    model = tiny_maskfeat()
    img = torch.randn(2, 1, 8, 8)
    mask = torch.tensor([[[1, 0], [0, 1]], [[0, 0], [1, 0]]], dtype=torch.bool)
    loss = model(img, mode="train", mask=mask)["loss"]
    latent = model.backbone.forward_mask(img, mask)[:, 1:]
    pred = model.head.head(latent)
    target = model.hog_layer(img)
    m = mask.flatten(1)
    expected = ((pred[m] - target[m]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert model.backbone.mask_token.grad is not None and model.backbone.mask_token.grad.abs().sum() > 0
    assert model(img, mode="extract")[-1].shape == (2, 16, 2, 2)


def test_mask_generator_masks_forty_percent_in_blocks():
    torch.manual_seed(0)
    gen = MaskFeatMaskGenerator(mask_window_size=14, mask_ratio=0.4)
    for _ in range(3):
        mask = gen(torch.zeros(3, 224, 224))["mask"]
        assert mask.shape == (14, 14) and int(mask.sum()) == 78  # int(196 * 0.4)


# ----------------------------------------------------------------------------- bad input
def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict, *extra: str) -> tuple[int, list[str]]:
    """``main([CONFIG, *extra])`` in this process on tiny data; (exit code, stderr's error lines)."""
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 4)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(FASHION, tmp_path / "bad.toml", values={"data.workers_per_gpu": 0, **values},
                        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                                 "evaluation.test.data_source": source})
    code = main([str(cfg), "--work-dir", str(tmp_path / "work"), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error")]


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_a_mask_ratio_outside_0_1_is_one_line_naming_file_and_key(tmp_path, capsys, ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        MaskFeatMaskGenerator(mask_window_size=7, mask_ratio=ratio)
    code, errors = _run(tmp_path, capsys, {"data.train.pipeline": [
        {"type": "ToImage"}, {"type": "MaskFeatMaskGenerator", "mask_window_size": 7, "mask_ratio": ratio}]})
    assert code == 2
    assert len(errors) == 1, errors
    assert "bad.toml: data.train.pipeline.1:" in errors[0] and "mask_ratio must be in (0, 1)" in errors[0]


def test_a_hog_cell_that_does_not_divide_the_patch_is_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="must divide the patch size"):
        HOGGenerator(pool=3, patch_size=4)
    code, errors = _run(tmp_path, capsys, {"model.hog_para.pool": 3}, "--check")
    assert code == 2
    assert len(errors) == 1, errors
    assert "bad.toml" in errors[0] and "hog_para.pool" in errors[0] and "must divide the patch size" in errors[0]


# ----------------------------------------------------------------------------- end to end
def test_two_iterations_of_the_fashion_config_through_the_cli(tmp_path, capsys):
    """In this process (``selfsup_core.cli.main``); CAE's test runs the real ``selfsup-run``."""
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 32)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(
        FASHION, tmp_path / "maskfeat.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 16, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.workers_per_gpu": 0, "evaluation.interval": 0,
                "model.backbone.arch": TINY_ARCH, "model.head.embed_dim": 16,
                "lr_config.warmup_iters": 1, "lr_config.warmup_by_epoch": False},
    )
    wd = tmp_path / "work"
    code = main([str(cfg), "--work-dir", str(wd), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (wd / "latest.pth").exists()
    losses = [r["loss"] for r in read_metrics(wd, "train")]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)
