"""CAE: the losses against a hand computation, the encoder on visible patches and the momentum
teacher on masked ones, the regressor/decoder shapes, the DALL-E tokenizer's weights through
import-weights (random weights; a file of another architecture is one line, exit 2), the two
crops and mask reaching the batch, and two iterations of the Fashion-MNIST config."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from selfsup_core.cli import main
from selfsup_core.errors import SelfSupError
from selfsup_core.testing import derive_config, read_metrics, run_selfsup
from selfsup_mim.cae import CAE, CAEHead, CAENeck, CAEViT
from selfsup_mim.dalle import DALLEEncoder

REPO = Path(__file__).resolve().parents[3]
FASHION = REPO / "examples" / "configs" / "cae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
TINY_ARCH = {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32}
TOKENIZER = {"group_count": 2, "n_hid": 8, "n_blk_per_group": 1, "input_channels": 1, "vocab_size": 10}


def tiny_cae(**head: object) -> CAE:
    backbone = CAEViT(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1, init_values=0.1,
                      output_cls_token=False)
    neck = CAENeck(patch_size=2, num_classes=10, embed_dims=16, num_heads=2, regressor_depth=1, decoder_depth=1,
                   init_values=0.1)
    return CAE(backbone, neck, CAEHead(tokenizer=TOKENIZER, **head), base_momentum=0.0)


# ----------------------------------------------------------------------------- losses
def test_losses_hand_computed():
    head = CAEHead(tokenizer=TOKENIZER, lambd=2)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])
    main_loss, align = head.loss(logits, target, pred, teacher)
    ce0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    ce1 = -math.log(1 / (2 + math.e))
    assert main_loss.item() == pytest.approx((ce0 + ce1) / 2, rel=1e-6)
    assert align.item() == pytest.approx(2 * (1 + 4 + 1 + 1) / 4, rel=1e-6)  # lambd x mean squared error
    assert CAEHead(tokenizer=TOKENIZER, lamb=0.5).lambd == 0.5  # the 0.x alias


def test_target_is_the_argmax_code_of_the_masked_patches():
    head = CAEHead(tokenizer=TOKENIZER)
    img_target = torch.rand(2, 1, 8, 8)
    logits = head.encoder(0.8 * img_target + 0.1)
    assert logits.shape == (2, 10, 4, 4)
    assert torch.equal(head.target(img_target), logits.argmax(1).flatten(1))


def test_the_algorithm_sums_main_and_weighted_alignment():
    torch.manual_seed(0)
    model = tiny_cae()
    img, img_target = torch.randn(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 1, 5, 9, 10]] = True
    mask[1, [3, 7, 11, 14, 15]] = True
    out = model(img, mode="train", mask=mask.view(2, 4, 4), img_target=img_target)
    assert out["loss"].item() == pytest.approx(out["main"].item() + out["align"].item(), rel=1e-6)
    # by hand from the parts
    visible = model.backbone.forward_visible(img, mask)
    assert visible.shape == (2, 1 + 11, 16)
    teacher = model.teacher.forward_visible(img, ~mask)[:, 1:]
    assert teacher.shape == (2, 5, 16)
    pos = model.backbone.pos_embed[:, 1:].expand(2, -1, -1)
    logits, latent = model.neck(visible[:, 1:], pos[mask].view(2, 5, 16), pos[~mask].view(2, 11, 16))
    assert logits.shape == (2, 5, 10) and latent.shape == (2, 5, 16)
    codes = model.head.target(img_target)[mask]
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 10), codes) + 2 * ((latent - teacher) ** 2).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.head.encoder.parameters())
    assert model.neck.mask_token.grad is not None and model.backbone.blocks[0].gamma_1.grad is not None


def test_the_teacher_follows_the_encoder_by_momentum():
    model = tiny_cae()
    model.momentum = 0.75
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
    before = [p.clone() for p in model.teacher.parameters()]
    model.momentum_update()
    for old, new, student in zip(before, model.teacher.parameters(), model.backbone.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * student)


# ----------------------------------------------------------------------------- tokenizer weights
def test_dalle_encoder_has_the_released_key_names_and_size():
    names = list(DALLEEncoder(n_hid=8, vocab_size=16).state_dict())
    assert names[:2] == ["blocks.input.w", "blocks.input.b"]
    assert "blocks.group_2.block_1.id_path.w" in names and "blocks.group_1.block_1.res_path.conv_4.b" in names
    assert names[-2:] == ["blocks.output.conv.w", "blocks.output.conv.b"]
    full = sum(p.numel() for p in DALLEEncoder().parameters())
    assert full == 53_786_240  # DALL-E's encoder (n_hid 256, 2 blocks x 4 groups, 8192 codes)


def test_tokenizer_weights_load_through_import_weights(tmp_path, capsys):
    source = DALLEEncoder(**TOKENIZER)
    torch.save(source.state_dict(), tmp_path / "encoder_stat_dict.pth")
    assert main(["import-weights", str(tmp_path / "encoder_stat_dict.pth"), str(tmp_path / "dalle.pth")]) == 0
    capsys.readouterr()
    head = CAEHead(tokenizer=TOKENIZER, tokenizer_path=str(tmp_path / "dalle.pth"))
    assert head.tokenizer_loaded
    for key, value in source.state_dict().items():
        assert torch.equal(head.encoder.state_dict()[key], value)


def test_a_tokenizer_file_of_another_architecture_is_one_line_exit_2(tmp_path, capsys):
    wrong = DALLEEncoder(**{**TOKENIZER, "n_hid": 12})
    torch.save(wrong.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="is not a DALLEEncoder of this architecture"):
        CAEHead(tokenizer=TOKENIZER, tokenizer_path=str(tmp_path / "wrong.pth"))
    cfg = derive_config(FASHION, tmp_path / "cae.toml",
                        values={"model.head.tokenizer_path": str(tmp_path / "wrong.pth")})
    code = main([str(cfg), "--check"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2
    assert len(errors) == 1, errors
    assert "cae.toml: model.head" in errors[0] and "tokenizer_path" in errors[0] and "wrong.pth" in errors[0]


def test_a_missing_tokenizer_file_passes_check_and_stops_training(tmp_path):
    model = tiny_cae(tokenizer_path=str(tmp_path / "absent.pth"))
    with pytest.raises(SelfSupError, match="model.head.tokenizer_path"):  # one line, exit 2, from selfsup-run
        model(torch.randn(1, 1, 8, 8), mode="train", mask=torch.ones(1, 4, 4, dtype=torch.bool).tril(),
              img_target=torch.rand(1, 1, 8, 8))


# ----------------------------------------------------------------------------- data and end to end
def test_two_crops_and_the_mask_reach_the_batch(tmp_path):
    from selfsup_core.build import build
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 4)
    dataset = build({
        "type": "OneViewDataset",
        "data_source": {"type": "NumpyArrays", "file": str(data)},
        "pipeline": [
            {"type": "RandomResizedCropAndInterpolationWithTwoPic", "size": 28, "second_size": 56,
             "interpolation": "bicubic", "second_interpolation": "lanczos", "scale": [0.5, 1.0]},
            {"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True},
            {"type": "BEiTMaskGenerator", "input_size": [7, 7], "num_masking_patches": 19, "min_num_patches": 4},
        ],
    }, "datasets")
    batch = default_collate([dataset[i] for i in range(4)])
    assert batch["img"].shape == (4, 1, 28, 28)
    assert batch["img_target"].shape == (4, 1, 56, 56)
    assert 0.0 <= float(batch["img_target"].min()) and float(batch["img_target"].max()) <= 1.0
    assert batch["mask"].shape == (4, 7, 7) and batch["mask"].sum(dim=(1, 2)).tolist() == [19] * 4


def test_two_iterations_of_the_fashion_config_through_selfsup_run(tmp_path):
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 32)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(
        FASHION, tmp_path / "cae.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 16, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.workers_per_gpu": 0, "evaluation.interval": 0,
                "model.backbone.arch": TINY_ARCH, "model.neck.embed_dims": 16, "model.neck.num_heads": 2,
                "model.neck.regressor_depth": 1, "model.neck.decoder_depth": 1,
                "lr_config.warmup_iters": 1, "lr_config.warmup_by_epoch": False},
    )
    wd = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", wd, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (wd / "latest.pth").exists()
    records = read_metrics(wd, "train")
    assert len(records) == 2
    for record in records:
        assert math.isfinite(record["loss"]) and record["loss"] == pytest.approx(record["main"] + record["align"],
                                                                                rel=1e-4)
