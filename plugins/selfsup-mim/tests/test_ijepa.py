"""I-JEPA: the multi-block mask sampler (block sizes, disjoint targets and context, the minimum
context, determinism), the loss against a hand computation, the predictor's positional mask
tokens, the EMA target encoder and its linear momentum schedule, and the Fashion-MNIST config
through ``selfsup-run``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from selfsup_core.testing import assert_validated_from_config, derive_config, read_metrics, run_selfsup
from selfsup_mim.ijepa import IJEPA, IJEPAHead, IJEPAPredictor, LinearMomentumUpdate, encode_patches
from selfsup_mim.ijepa_masks import MultiBlockMaskGenerator, block_size
from selfsup_models.backbones.vision_transformer import VisionTransformer

REPO = Path(__file__).resolve().parents[3]
FASHION = REPO / "examples" / "configs" / "ijepa_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
TINY_ARCH = {"embed_dims": 16, "num_layers": 1, "num_heads": 2, "feedforward_channels": 32}
PAPER = {"target_scale": (0.15, 0.2), "target_aspect_ratio": (0.75, 1.5)}

# Every (h, w) the paper's target range gives on a 14 x 14 grid: n = int(196 s) patches,
# s in [0.15, 0.2), h = round(sqrt(n a)), w = round(sqrt(n / a)), a in [0.75, 1.5).
TARGET_SIZES_14 = {(5, 5), (5, 6), (5, 7), (6, 4), (6, 5), (6, 6), (6, 7), (7, 4), (7, 5), (7, 6), (8, 5)}


# ----------------------------------------------------------------------------- block sizes
def test_block_size_by_hand() -> None:
    # s = 0.175 -> n = int(34.3) = 34; a = 1.125 -> h = round(sqrt(38.25)) = 6, w = round(sqrt(30.2)) = 5
    assert block_size(0.5, 0.5, (0.15, 0.2), (0.75, 1.5), (14, 14)) == (6, 5)
    # context: s = 0.85 -> n = 166, a square of round(sqrt(166)) = 13; s -> 1: 14 (the whole grid)
    assert block_size(0.0, 0.0, (0.85, 1.0), (1.0, 1.0), (14, 14)) == (13, 13)
    assert block_size(0.999, 0.0, (0.85, 1.0), (1.0, 1.0), (14, 14)) == (14, 14)
    sizes = {block_size(i / 200, j / 200, PAPER["target_scale"], PAPER["target_aspect_ratio"], (14, 14))
             for i in range(200) for j in range(200)}
    assert sizes == TARGET_SIZES_14
    # 24..42 patches of 196 (scale 0.15-0.2 up to rounding), h / w in 4/6 .. 8/5
    assert min(h * w for h, w in sizes) == 24 and max(h * w for h, w in sizes) == 42


def _rectangle(indices: torch.Tensor, width: int) -> tuple[int, int]:
    """``(h, w)`` of the full rectangle the patch indices cover (asserting it is one)."""
    rows, cols = (indices // width).tolist(), (indices % width).tolist()
    h, w = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
    assert len(indices) == h * w == len(set(indices.tolist()))
    return h, w


def test_sampler_on_a_14x14_grid_follows_the_paper() -> None:
    generator = MultiBlockMaskGenerator((14, 14), num_targets=4, context_scale=(0.85, 1.0), min_keep=10, **PAPER)
    rng = torch.Generator().manual_seed(0)
    for _ in range(5):
        context, targets = generator(16, rng)
        assert targets.shape[:2] == (4, 16) and context.shape[0] == 16
        assert context.size(1) >= 10                              # the minimum context is kept
        sizes = {_rectangle(targets[t, n], 14) for t in range(4) for n in range(16)}
        assert len(sizes) == 1 and sizes <= TARGET_SIZES_14       # one target size per batch
        for n in range(16):
            kept = context[n].tolist()
            assert kept == sorted(set(kept))
            assert not set(kept) & set(targets[:, n].flatten().tolist())   # targets removed from the context
            # the context lies inside one square block of 13 or 14 patches a side
            rows, cols = context[n] // 14, context[n] % 14
            assert rows.max() - rows.min() < 14 and cols.max() - cols.min() < 14


def test_sampler_is_deterministic_under_a_seed() -> None:
    generator = MultiBlockMaskGenerator((14, 14))
    first = generator(8, torch.Generator().manual_seed(3))
    again = generator(8, torch.Generator().manual_seed(3))
    other = generator(8, torch.Generator().manual_seed(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


def test_an_impossible_minimum_context_is_refused() -> None:
    generator = MultiBlockMaskGenerator((4, 4), num_targets=4, target_scale=(0.25, 0.25), min_keep=15, max_tries=3)
    with pytest.raises(ValueError, match="min_keep = 15"):
        generator(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="min_keep"):
        MultiBlockMaskGenerator((4, 4), min_keep=16)
    with pytest.raises(ValueError, match="target_scale"):
        MultiBlockMaskGenerator((4, 4), target_scale=(0.3, 0.2))


# ----------------------------------------------------------------------------- loss
def test_loss_by_hand() -> None:
    # target [1, 3] layer-normalised: mean 2, variance 1 -> [-1, 1] / sqrt(1 + 1e-5)
    target = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    pred = torch.tensor([[[0.5, 0.5]]], dtype=torch.float64, requires_grad=True)
    t = [-1 / math.sqrt(1 + 1e-5), 1 / math.sqrt(1 + 1e-5)]
    d = [0.5 - t[0], 0.5 - t[1]]                                    # about 1.5 and -0.5
    l2 = IJEPAHead(loss="l2")(pred, target)["loss"]
    assert l2.item() == pytest.approx((d[0] ** 2 + d[1] ** 2) / 2, abs=1e-12)   # ~ (2.25 + 0.25) / 2
    smooth = IJEPAHead(loss="smooth_l1")(pred, target)["loss"]
    assert smooth.item() == pytest.approx(((abs(d[0]) - 0.5) + 0.5 * d[1] ** 2) / 2, abs=1e-12)  # ~ 0.5625
    raw = IJEPAHead(norm_target=False)(pred, target)["loss"]
    assert raw.item() == pytest.approx((0.25 + 6.25) / 2)
    l2.backward()
    assert pred.grad is not None
    with pytest.raises(ValueError, match="smooth_l1"):
        IJEPAHead(loss="l1")


# ----------------------------------------------------------------------------- model
def tiny_ijepa(**kwargs) -> IJEPA:
    torch.manual_seed(0)
    vit = VisionTransformer(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1, with_cls_token=False,
                            output_cls_token=False, pos_embed_type="sincos")
    predictor = IJEPAPredictor(num_patches=16, embed_dim=16, predictor_embed_dim=8, depth=1, num_heads=2)
    return IJEPA(vit, predictor, IJEPAHead(), min_keep=2, **kwargs)


def test_targets_come_from_the_target_encoder_and_only_the_context_is_trained() -> None:
    model = tiny_ijepa()
    img = torch.randn(2, 1, 8, 8)
    context_idx = torch.tensor([[0, 1, 2, 4], [5, 6, 9, 10]])
    target_idx = torch.tensor([[[10, 11], [0, 1]], [[14, 15], [2, 3]]])      # (T=2, N=2, 2)
    pred, target = model.predict(img, context_idx, target_idx)
    assert pred.shape == target.shape == (4, 2, 16)
    tokens = encode_patches(model.target_backbone, img)
    assert torch.equal(target[1], tokens[1, [0, 1]])                        # block 0 of image 1
    assert torch.equal(target[2], tokens[0, [14, 15]])                      # block 1 of image 0
    model.head(pred, target)["loss"].backward()
    assert model.backbone.blocks[0].attn.qkv.weight.grad is not None
    assert model.neck.mask_token.grad is not None
    assert all(p.grad is None for p in model.target_backbone.parameters())


def test_predictor_mask_tokens_carry_their_position() -> None:
    model = tiny_ijepa()
    context = torch.randn(1, 3, 16)
    context_idx = torch.tensor([[0, 5, 10]])
    at_1 = model.neck(context, context_idx, torch.tensor([[1]]))
    at_15 = model.neck(context, context_idx, torch.tensor([[15]]))
    both = model.neck(context, context_idx, torch.tensor([[1, 15]]))
    assert not torch.allclose(at_1, at_15)                  # same mask token, other position embedding
    assert both.shape == (1, 2, 16)


def test_ema_update_and_linear_momentum_schedule() -> None:
    model = tiny_ijepa(base_momentum=0.996)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.fill_(1.0)
        for p in model.target_backbone.parameters():
            p.fill_(0.0)
    hook = LinearMomentumUpdate(end_momentum=1.0)
    runner = SimpleNamespace(model=model, iter=50, max_iters=100, is_update_step=True)
    hook.selfsup_before_iter(runner)
    assert model.momentum == pytest.approx(0.998)           # 0.996 + (1 - 0.996) * 50 / 100
    model.momentum = 0.9
    hook.selfsup_after_iter(runner, {})
    trainable = [p for p in model.target_backbone.parameters() if p.dtype.is_floating_point]
    patch = model.target_backbone.patch_embed.proj.weight
    assert torch.allclose(patch, torch.full_like(patch, 0.1))  # 0.9 * 0 + 0.1 * 1
    assert trainable
    for it, expected in ((0, 0.996), (100, 1.0)):
        hook.selfsup_before_iter(SimpleNamespace(model=model, iter=it, max_iters=100))
        assert model.momentum == pytest.approx(expected)


def test_wrong_backbone_settings_are_refused() -> None:
    vit = VisionTransformer(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1)
    with pytest.raises(ValueError, match="with_cls_token = false"):
        IJEPA(vit, IJEPAPredictor(num_patches=16, embed_dim=16, predictor_embed_dim=8, depth=1, num_heads=2),
              IJEPAHead())
    vit = VisionTransformer(arch=TINY_ARCH, img_size=8, patch_size=2, in_channels=1, with_cls_token=False,
                            output_cls_token=False)
    with pytest.raises(ValueError, match="num_patches"):
        IJEPA(vit, IJEPAPredictor(num_patches=64, embed_dim=16, predictor_embed_dim=8, depth=1, num_heads=2),
              IJEPAHead())


def test_a_misspelt_key_of_the_new_components_is_a_config_error() -> None:
    for kind, name in (("algorithms", "IJEPA"), ("necks", "IJEPAPredictor"), ("heads", "IJEPAHead"),
                       ("hooks", "LinearMomentumUpdate")):
        assert_validated_from_config(kind, name)


# ----------------------------------------------------------------------------- end to end
def test_one_epoch_of_the_fashion_config_through_selfsup_run(tmp_path) -> None:
    from selfsup_data.testing import fashion_mnist_npz

    data, _ = fashion_mnist_npz(tmp_path / "fm.npz", 128)
    source = {"type": "NumpyArrays", "file": str(data)}
    cfg = derive_config(
        FASHION, tmp_path / "ijepa.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 64, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.workers_per_gpu": 0, "lr_config.warmup_iters": 1,
                "model.backbone.arch": {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64},
                "model.neck.embed_dim": 32, "model.neck.predictor_embed_dim": 16, "model.neck.depth": 1,
                "model.neck.num_heads": 2},
    )
    work = tmp_path / "work"
    proc = run_selfsup(cfg, "--work-dir", work, "--device", "cpu", env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(work, "train")]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    evals = read_metrics(work, "eval")                      # kNN after the last epoch, on the target encoder
    assert evals and any("knn" in k.lower() for k in evals[-1])
    state = torch.load(work / "latest.pth", map_location="cpu", weights_only=False)["state_dict"]
    online, target = state["backbone.patch_embed.proj.weight"], state["target_backbone.patch_embed.proj.weight"]
    assert not torch.equal(online, target)                  # the EMA lags the trained encoder


def test_selfsup_run_list_shows_ijepa_with_its_neck_head_and_hook(capsys) -> None:
    from selfsup_core.cli import main

    assert main(["list", "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)["kinds"]
    for kind, name in (("algorithms", "IJEPA"), ("necks", "IJEPAPredictor"), ("heads", "IJEPAHead"),
                       ("hooks", "LinearMomentumUpdate")):
        assert {r["name"]: r["dist"] for r in kinds[kind]}[name] == "selfsup-mim"
