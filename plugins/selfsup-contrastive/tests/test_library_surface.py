"""The library surface: presets equal the shipped configs' pipelines, losses give the heads'
values, components build in one call, kNN and the linear probe work on plain tensors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from selfsup_core.config import load_config
from selfsup_core.errors import ConfigError
from selfsup_data import presets
from selfsup_eval.functional import knn_top1, knn_topk_accuracy, linear_probe
from selfsup_mim.losses import MAEPixelLoss
from selfsup_models import build_backbone, build_head, build_neck
from selfsup_models.losses import BarlowTwinsLoss, NegativeCosineLoss, SwAVLoss

from selfsup_contrastive.losses import InfoNCELoss, NTXentLoss

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


@pytest.mark.parametrize(("config", "preset"), [
    ("simclr_resnet50_8xb32-coslr-200e_in1k", presets.SimCLRTransform),
    ("mocov1_resnet50_8xb32-steplr-200e_in1k", presets.MoCoV1Transform),
    ("mocov2_resnet50_8xb32-coslr-200e_in1k", presets.MoCoV2Transform),
    ("byol_resnet50_8xb32-accum16-coslr-200e_in1k", presets.BYOLTransform),
    ("barlowtwins_resnet50_8xb256-coslr-300e_in1k", presets.BarlowTwinsTransform),
    ("swav_resnet50_8xb32-mcrop-2-6-coslr-200e_in1k-224-96", presets.SwAVTransform),
    ("mae_vit-base-p16_8xb512-coslr-400e_in1k", presets.MAETransform),
    ("simmim_swin-base_16xb128-coslr-100e_in1k-192", presets.SimMIMTransform),
    ("simsiam_resnet50_8xb32-coslr-100e_in1k", presets.SimSiamTransform),
    ("mocov3_resnet50_8xb512-amp-coslr-100e_in1k", presets.MoCoV3Transform),
    ("densecl_resnet50_8xb32-coslr-200e_in1k", presets.DenseCLTransform),
    ("npid_resnet50_8xb32-steplr-200e_in1k", presets.NPIDTransform),
    ("deepcluster_resnet50_8xb64-steplr-200e_in1k", presets.DeepClusterTransform),
    ("odc_resnet50_8xb64-steplr-440e_in1k", presets.ODCTransform),
])
def test_presets_are_the_shipped_pipelines(config: str, preset: type) -> None:
    train = load_config(CONFIGS / f"{config}.toml").data["data"]["train"]
    transform = preset()
    assert transform.pipelines == (train.get("pipelines") or [train["pipeline"]])
    assert transform.num_views == list(train.get("num_views", [1]))


def test_from_config_reads_any_config() -> None:
    name = "rotation-pred_resnet18_1xb128-steplr-70e_fashion-mnist.toml"
    transform = presets.from_config(f"selfsup-pretext::{name}")
    assert transform.pipelines == [load_config(CONFIGS / name).data["data"]["train"]["pipeline"]]


def test_preset_outputs() -> None:
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    views = presets.SwAVTransform(crop_sizes=(32, 16), num_crops=(2, 3))(image)
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    grey = presets.SimCLRTransform(28, mean=[0.5], std=[0.5], grayscale=True)(image[:1])
    assert len(grey) == 2 and grey[0].shape == (1, 28, 28) and grey[0].dtype == torch.float32
    assert presets.MAETransform(32)(image).shape == (3, 32, 32)


def test_nt_xent_hand_value_and_infonce() -> None:
    # examples of test_simclr.py: views a1, b1 then a2, b2; T = 0.5 gives 0.706676
    z = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0], [0, 1.0, 1.0]], dtype=torch.float64)
    assert NTXentLoss(0.5)(z[:2], z[2:]).item() == pytest.approx(0.706676, abs=1e-6)
    q, k = z[:2], z[2:]
    # no queue: negatives are the other keys: row a: -log(e^(r/T) / (e^(r/T) + e^(0/T)))
    r = 1 / math.sqrt(2)
    row_a = -math.log(math.exp(r / 0.5) / (math.exp(r / 0.5) + 1))
    row_b = -math.log(math.exp(r / 0.5) / (math.exp(r / 0.5) + math.exp(r / 0.5)))
    assert InfoNCELoss(0.5)(q, k).item() == pytest.approx((row_a + row_b) / 2, abs=1e-9)
    queue = torch.nn.functional.normalize(k, dim=1).T  # the keys as the queue: same negatives + the positive
    row_a_q = -math.log(math.exp(r / 0.5) / (2 * math.exp(r / 0.5) + 1))
    row_b_q = -math.log(math.exp(r / 0.5) / (3 * math.exp(r / 0.5)))
    assert InfoNCELoss(0.5)(q, k, queue).item() == pytest.approx((row_a_q + row_b_q) / 2, abs=1e-9)


def test_siamese_swav_and_mae_losses() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert NegativeCosineLoss()(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert NegativeCosineLoss()(a, a.flip(1)).item() == pytest.approx(2.0)
    z1, z2 = torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), torch.randn(8, 4)
    head = build_head("LatentCrossCorrelationHead", in_channels=4, lambd=0.01)
    assert BarlowTwinsLoss(4, 0.01)(z1, z2).item() == pytest.approx(head(z1, z2)["loss"].item())
    swav = SwAVLoss(feat_dim=4, num_prototypes=5)
    assert swav(torch.nn.functional.normalize(torch.randn(8, 4), dim=1)).dim() == 0
    img = torch.zeros(1, 1, 4, 4)
    pred = torch.ones(1, 4, 4)  # 4 patches of 2x2 pixels, predicted 1 where the target is 0
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert MAEPixelLoss(patch_size=2)(img, pred, mask).item() == pytest.approx(1.0)


def test_components_build_in_one_call() -> None:
    torch.manual_seed(0)
    backbone = build_backbone("ResNet", depth=18, in_channels=1, stem_type="cifar", base_channels=4, stem_channels=4)
    neck = build_neck("NonLinearNeck", in_channels=32, hid_channels=16, out_channels=8, with_avg_pool=True)
    out = neck(backbone(torch.zeros(2, 1, 12, 12)))[0]
    assert out.shape == (2, 8)
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        build_backbone("ResNet", dpeth=18)


def test_knn_and_linear_probe_on_tensors() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.2], [0.2, 1.0], [0.3, 1.0]])
    assert knn_top1(bank, labels, query, torch.tensor([0, 1, 0]), k=2) == pytest.approx(2 / 3)
    assert knn_topk_accuracy(bank, labels, query, torch.tensor([0, 1, 0]), k=4, topk=(1, 2))[2] == 1.0
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g) + torch.arange(64).remainder(2).unsqueeze(1) * 4
    y = torch.arange(64).remainder(2)
    result = linear_probe(x, y, x, y, epochs=10, batch_size=16, lr=1.0)
    assert result["linear_top1"] == 1.0 and result["linear_top5"] == 1.0
