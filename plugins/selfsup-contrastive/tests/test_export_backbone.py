"""``selfsup-run export`` on real MoCo checkpoints: the query encoder's ResNet-50 loads into
``torchvision.models.resnet50`` (strict, every non-fc key) with identical features, never the
momentum copy; and the reverse, torchvision weights into ``init_cfg`` Pretrained."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from selfsup_core.build import build_model
from selfsup_core.config import load_config
from selfsup_core.engine.checkpoint import atomic_save
from selfsup_core.testing import run_selfsup
from selfsup_core.api import load_safetensors
from selfsup_models.backbones.resnet import ResNet
from torch import nn

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"


def _pooled(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return backbone.eval()(x)[-1].mean(dim=(2, 3))


def _torchvision_features(weights: dict[str, torch.Tensor], arch: str, x: torch.Tensor) -> torch.Tensor:
    model = getattr(torchvision.models, arch)()
    model.fc = nn.Identity()  # strict=True then covers exactly the non-fc keys
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def moco_r50_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """The ImageNet MoCo v2 config's model (ResNet-50) in a selfsup training checkpoint,
    with the key encoder and BN statistics moved away from the query encoder's."""
    config = load_config(CONFIGS / "mocov2_resnet50_8xb32-coslr-200e_in1k.toml",
                         ["model.queue_len=256"])
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for module in model.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
        for param in model.encoder_k.parameters():
            param.add_(0.05 * torch.randn_like(param))
    path = tmp_path_factory.mktemp("moco") / "latest.pth"
    atomic_save({"meta": {"epoch": 1, "iter": 10}, "state_dict": model.state_dict()}, path)
    return path, model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_exported_resnet50_loads_into_torchvision_with_identical_features(
    moco_r50_checkpoint: tuple[Path, nn.Module], tmp_path: Path, suffix: str
) -> None:
    ckpt, model = moco_r50_checkpoint
    out = tmp_path / f"r50{suffix}"
    done = run_selfsup("export", ckpt, out, "--to", "torchvision")
    assert done.returncode == 0, done.stderr
    assert "matches torchvision resnet50 key for key and shape for shape" in done.stdout
    assert "dropped encoder_k.*" in done.stdout and "momentum (key) encoder copy" in done.stdout
    weights = load_safetensors(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    x = torch.randn(2, 3, 96, 96)
    exported = _torchvision_features(weights, "resnet50", x)
    torch.testing.assert_close(exported, _pooled(model.backbone, x), rtol=0, atol=1e-5)
    key_encoder = _pooled(model.encoder_k[0], x)
    assert (exported - key_encoder).abs().max() > 1e-2  # the query encoder, not the momentum copy


def test_exported_weights_come_back_through_init_cfg_pretrained(moco_r50_checkpoint: tuple[Path, nn.Module],
                                                                  tmp_path: Path) -> None:
    ckpt, model = moco_r50_checkpoint
    out = tmp_path / "r50.safetensors"
    assert run_selfsup("export", ckpt, out).returncode == 0
    backbone = ResNet(depth=50, out_indices=(4,),
                      init_cfg={"type": "Pretrained", "checkpoint": str(out), "strict": True})
    backbone.init_weights()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(_pooled(backbone, x), _pooled(model.backbone, x), rtol=0, atol=0)


def test_torchvision_weights_import_into_a_resnet_backbone(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet50()
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    done = run_selfsup("import-weights", tmp_path / "resnet50-0676ba61.pth", tmp_path / "r50.pth")
    assert done.returncode == 0, done.stderr
    assert "a ResNet (resnet50)" in done.stdout and "dropped fc.* (2 tensors)" in done.stdout
    backbone = ResNet(depth=50, out_indices=(4,),
                      init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "r50.pth"), "strict": True})
    backbone.init_weights()
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.eval()(x)
    torch.testing.assert_close(_pooled(backbone, x), expected, rtol=0, atol=1e-5)
