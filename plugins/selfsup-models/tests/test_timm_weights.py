"""ViT weights between timm and selfsup: a timm hub-style ``.safetensors`` imported with
``selfsup-run import-weights`` gives the same cls-token features in our VisionTransformer,
and our ViT exported ``--to timm`` loads strictly into timm's with the same features."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from selfsup_core.engine.checkpoint import atomic_save
from selfsup_core.testing import run_selfsup
from selfsup_core.api import load_safetensors, save_safetensors
from selfsup_models.backbones.vision_transformer import VisionTransformer

timm_vit = pytest.importorskip("timm.models.vision_transformer")

ARCH = {"embed_dims": 64, "num_layers": 2, "num_heads": 4, "feedforward_channels": 256}


def _timm(num_classes: int = 0) -> torch.nn.Module:
    return timm_vit.VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4,
                                      num_classes=num_classes).eval()


def _cls_token(ours: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ours.eval()(x)[-1][1]


def test_timm_vit_weights_import_with_identical_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = _timm(num_classes=10)
    save_safetensors(reference.state_dict(), tmp_path / "model.safetensors")
    done = run_selfsup("import-weights", tmp_path / "model.safetensors", tmp_path / "vit.pth", "--from", "timm")
    assert done.returncode == 0, done.stderr
    assert "a ViT with timm key names" in done.stdout and "dropped head.* (2 tensors)" in done.stdout
    ours = VisionTransformer(arch=ARCH, img_size=32, patch_size=4, output_cls_token=True,
                             init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "vit.pth"), "strict": True})
    ours.init_weights()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.forward_features(x)[:, 0]
    torch.testing.assert_close(_cls_token(ours, x), expected, rtol=0, atol=1e-5)


def test_our_vit_exports_to_timm_with_identical_features(tmp_path: Path) -> None:
    torch.manual_seed(1)
    ours = VisionTransformer(arch=ARCH, img_size=32, patch_size=4, output_cls_token=True)
    atomic_save({"meta": {"epoch": 1}, "state_dict": {f"backbone.{k}": v for k, v in ours.state_dict().items()}},
                tmp_path / "latest.pth")
    done = run_selfsup("export", tmp_path / "latest.pth", tmp_path / "vit.safetensors", "--to", "timm")
    assert done.returncode == 0, done.stderr
    assert "matches timm's VisionTransformer" in done.stdout
    target = _timm()
    target.load_state_dict(load_safetensors(tmp_path / "vit.safetensors"), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = target.forward_features(x)[:, 0]
    torch.testing.assert_close(_cls_token(ours, x), expected, rtol=0, atol=1e-5)


def test_timm_backbone_takes_timm_checkpoints_and_exports_them_back(tmp_path: Path) -> None:
    import timm
    from selfsup_models.backbones.timm_backbone import TimmBackbone

    torch.manual_seed(2)
    reference = timm.create_model("mobilenetv3_small_050", num_classes=7).eval()
    save_safetensors(reference.state_dict(), tmp_path / "model.safetensors")  # as the hub has it
    ours = TimmBackbone("mobilenetv3_small_050",
                        init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "model.safetensors")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x)[0], reference.forward_features(x), rtol=0, atol=0)
    atomic_save({"state_dict": {f"backbone.{k}": v for k, v in ours.state_dict().items()}}, tmp_path / "latest.pth")
    done = run_selfsup("export", tmp_path / "latest.pth", tmp_path / "mnv3.pth", "--to", "timm")
    assert done.returncode == 0, done.stderr
    assert "a TimmBackbone: timm's own key names" in done.stdout
    fresh = timm.create_model("mobilenetv3_small_050", num_classes=0)
    fresh.load_state_dict(torch.load(tmp_path / "mnv3.pth", weights_only=True), strict=True)
