"""ViT weights between torchvision and selfsup: torchvision's ``VisionTransformer`` names
(``conv_proj``, ``encoder.layers.encoder_layer_i.self_attention.in_proj_weight`` ...) are
renamed both ways by ``selfsup-run export --to torchvision`` and ``import-weights``, with
identical cls-token features."""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from selfsup_core.engine.checkpoint import atomic_save
from selfsup_core.testing import run_selfsup
from selfsup_models.backbones.vision_transformer import VisionTransformer

ARCH = {"embed_dims": 64, "num_layers": 2, "num_heads": 4, "feedforward_channels": 256}


def _torchvision_vit() -> torch.nn.Module:
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4,
                                                 hidden_dim=64, mlp_dim=256)
    model.heads = torch.nn.Identity()  # its forward then returns the normalised cls token
    return model.eval()


def _cls_token(ours: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ours.eval()(x)[-1][1]


def test_our_vit_exports_to_torchvision_with_identical_features(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ours = VisionTransformer(arch=ARCH, img_size=32, patch_size=4, output_cls_token=True)
    state = {f"backbone.{k}": v for k, v in ours.state_dict().items()}
    state["neck.fc.weight"] = torch.zeros(8, 64)
    atomic_save({"meta": {"epoch": 2}, "state_dict": state}, tmp_path / "latest.pth")
    done = run_selfsup("export", tmp_path / "latest.pth", tmp_path / "vit.pth", "--to", "torchvision")
    assert done.returncode == 0, done.stderr
    assert "matches torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2" in done.stdout
    target = _torchvision_vit()
    target.load_state_dict(torch.load(tmp_path / "vit.pth", weights_only=True), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = target(x)
    torch.testing.assert_close(_cls_token(ours, x), expected, rtol=0, atol=1e-5)


def test_torchvision_vit_weights_import_with_identical_features(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4,
                                                     hidden_dim=64, mlp_dim=256, num_classes=10).eval()
    torch.save(reference.state_dict(), tmp_path / "vit_tv.pth")
    done = run_selfsup("import-weights", tmp_path / "vit_tv.pth", tmp_path / "vit.safetensors", "--from", "torchvision")
    assert done.returncode == 0, done.stderr
    assert "a torchvision ViT (renamed to timm names)" in done.stdout and "dropped heads.* (2 tensors)" in done.stdout
    ours = VisionTransformer(arch=ARCH, img_size=32, patch_size=4, output_cls_token=True,
                             init_cfg={"type": "Pretrained", "checkpoint": str(tmp_path / "vit.safetensors"),
                                       "strict": True})
    ours.init_weights()
    reference.heads = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(_cls_token(ours, x), expected, rtol=0, atol=1e-5)


def test_a_vit_without_cls_token_is_refused_for_torchvision(tmp_path: Path) -> None:
    ours = VisionTransformer(arch=ARCH, img_size=32, patch_size=4, with_cls_token=False, output_cls_token=False)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in ours.state_dict().items()}}, tmp_path / "c.pth")
    done = run_selfsup("export", tmp_path / "c.pth", tmp_path / "o.pth", "--to", "torchvision")
    assert done.returncode == 2 and "this ViT has no cls token" in done.stderr and "use --to timm" in done.stderr
    assert not (tmp_path / "o.pth").exists()
