"""The reconstruction PNG: rows, size, de-normalisation, atomic write, both algorithms."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from selfsup_core.build import build_model
from selfsup_core.config import load_config
from selfsup_core.testing import derive_config
from selfsup_mim.visualize import main, reconstruct_rows, save_grid

REPO = Path(__file__).resolve().parents[3]
CONFIGS = REPO / "examples" / "configs"
SMALL = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}


def small_config(tmp_path: Path, name: str, values: dict) -> Path:
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 8)
    source = {"type": "NumpyArrays", "file": str(data)}
    return derive_config(CONFIGS / name, tmp_path / "cfg.toml",
                         replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                                  "evaluation.test.data_source": source},
                         values={"model.backbone.arch": SMALL, **values})


@pytest.mark.parametrize(("name", "values"), [
    ("mae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml", {"model.neck.embed_dim": 16,
                                                                "model.neck.decoder_embed_dim": 8,
                                                                "model.neck.decoder_depth": 1}),
    ("simmim_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml", {"model.neck.in_channels": 16}),
])
def test_main_writes_a_four_row_png(tmp_path, name, values):
    cfg = small_config(tmp_path, name, values)
    model = build_model(load_config(cfg))
    ckpt = tmp_path / "latest.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "png" / "recon.png"
    assert main([str(cfg), "--checkpoint", str(ckpt), "--out", str(out), "--num-images", "3", "--scale", "2"]) == 0
    image = Image.open(out)
    # 3 columns and 4 rows of 56 px cells with 2 px gaps
    assert image.size == (3 * 58 + 2, 4 * 58 + 2) and image.mode == "L"
    assert [p.name for p in out.parent.iterdir()] == ["recon.png"]   # no temporary file left


def test_mae_rows_keep_visible_pixels_and_grey_out_removed_ones():
    from selfsup_mim.heads import MAEPretrainHead
    from selfsup_mim.mae import MAE
    from selfsup_mim.necks import MAEPretrainDecoder
    from selfsup_models.backbones.vision_transformer import MAEViT

    torch.manual_seed(0)
    model = MAE(MAEViT(arch=SMALL, img_size=8, patch_size=2, in_channels=1),
                MAEPretrainDecoder(num_patches=16, patch_size=2, in_chans=1, embed_dim=16, decoder_embed_dim=8,
                                   decoder_depth=1, decoder_num_heads=2),
                MAEPretrainHead(norm_pix=True, patch_size=2))
    img = torch.randn(2, 1, 8, 8)
    (original, masked, rec, pasted), pixel_mask = reconstruct_rows(model, img)
    assert pixel_mask.sum().item() == 2 * 12 * 4           # 12 of 16 patches, 4 pixels each
    visible = pixel_mask == 0
    assert torch.equal(original, img)
    assert torch.equal(masked[visible], img[visible]) and torch.all(masked[~visible] == 0)
    assert torch.equal(pasted[visible], img[visible]) and torch.equal(pasted[~visible], rec[~visible])


def test_save_grid_rgb(tmp_path):
    rows = [torch.rand(2, 3, 4, 4) for _ in range(3)]
    out = save_grid(rows, tmp_path / "g.png", scale=1)
    assert Image.open(out).size == (2 * 6 + 2, 3 * 6 + 2) and Image.open(out).mode == "RGB"
