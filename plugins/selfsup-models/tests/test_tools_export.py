"""``selfsup-run export`` / ``import-weights`` (contributed by selfsup-models), on
checkpoints laid out as selfsup, MMSelfSup and OpenSelfSup write them (torchvision ResNets
stand in for the backbone here; the plugins' tests export real selfsup models)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from selfsup_core.api import cli_main as main
from selfsup_core.api import load_safetensors, read_safetensors_metadata, read_state_dict
from selfsup_core.testing import run_selfsup


def _resnet(arch: str = "resnet18", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)()
    for module in model.modules():  # non-trivial BN statistics, so a wrong copy shows
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _training_checkpoint(path: Path, online: nn.Module, momentum: nn.Module, online_prefix: str = "backbone.",
                         momentum_prefix: str = "encoder_k.0.") -> Path:
    """A MoCo-style training checkpoint: online backbone, momentum copy, neck, queue."""
    state = {f"{online_prefix}{k}": v for k, v in online.state_dict().items() if not k.startswith("fc.")}
    state.update({f"{momentum_prefix}{k}": v for k, v in momentum.state_dict().items() if not k.startswith("fc.")})
    state.update({"neck.mlp.0.weight": torch.randn(8, 512), "queue": torch.randn(8, 16),
                  "queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"meta": {"epoch": 3, "iter": 30}, "state_dict": state, "optimizer": {"state": {}}}, path)
    return path


def _cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``selfsup-run ARGS`` in this process: ``(exit status, stdout, stderr)`` (the real
    subprocess is exercised by the tests that call ``run_selfsup``)."""
    status = main([str(a) for a in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.fc = nn.Identity()
    with torch.no_grad():
        return model.eval()(x)


# -- export -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_export_writes_the_online_backbone_that_torchvision_loads_strictly(tmp_path: Path, fmt: str) -> None:
    online, momentum = _resnet("resnet18", 0), _resnet("resnet18", 1)
    ckpt = _training_checkpoint(tmp_path / "latest.pth", online, momentum)
    out = tmp_path / f"backbone.{fmt}"
    done = run_selfsup("export", ckpt, out, "--to", "torchvision")
    assert done.returncode == 0, done.stderr
    assert "matches torchvision resnet18 key for key and shape for shape" in done.stdout
    assert "dropped encoder_k.* (120 tensors): momentum (key) encoder copy" in done.stdout
    assert "dropped queue (1 tensor): negative-key queue" in done.stdout
    weights = load_safetensors(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    target = torchvision.models.resnet18()
    target.fc = nn.Identity()
    target.load_state_dict(weights, strict=True)  # every non-fc key, nothing else
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(_features(target, x), _features(online, x))
    assert not torch.allclose(_features(target, x), _features(momentum, x))


def test_export_reports_as_json_and_finds_openselfsup_prefixes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    online, momentum = _resnet("resnet18", 0), _resnet("resnet18", 1)
    _training_checkpoint(tmp_path / "epoch_3.pth", online, momentum, "online_net.0.", "target_net.0.")
    status, out_text, err_text = _cli(capsys, "export", tmp_path, tmp_path / "b.pth", "--json")  # the work dir
    assert status == 0, err_text
    report = json.loads(out_text)
    assert report["checkpoint"] == str(tmp_path / "epoch_3.pth")
    assert report["prefix"] == "online_net.0." and report["kept"] == 120 and report["epoch"] == 3
    assert report["parameters"] == sum(p.numel() for n, p in online.named_parameters() if not n.startswith("fc."))
    assert {d["keys"]: d["reason"] for d in report["dropped"]}["target_net.*"] == "momentum (target) network copy"
    state, _ = read_state_dict(tmp_path / "b.pth")
    assert torch.equal(state["layer4.1.bn2.running_var"], online.state_dict()["layer4.1.bn2.running_var"])


def test_export_names_the_shapes_a_modified_resnet_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = torchvision.models.resnet18()
    small.conv1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # the grey-scale "cifar" stem
    ckpt = _training_checkpoint(tmp_path / "c.pth", small, small)
    status, out_text, err_text = _cli(capsys, "export", ckpt, tmp_path / "c_out.pth", "--to", "torchvision")
    assert status == 0, err_text
    assert "key names match torchvision resnet18; 1 shapes differ" in out_text
    assert "conv1.weight: (64, 1, 3, 3) here, (64, 3, 7, 7) in torchvision resnet18" in out_text


def test_export_refuses_what_it_cannot_do_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = _training_checkpoint(tmp_path / "latest.pth", _resnet(), _resnet())
    out = tmp_path / "b.pth"
    out.write_bytes(b"precious")
    for args, expected in [
        ((ckpt, out), "b.pth: exists; pass --force to overwrite it"),
        ((ckpt, ckpt, "--force"), "latest.pth: is the input file"),
        ((ckpt, tmp_path / "x.pth", "--prefix", "student."), "starts with prefix 'student.'; prefixes found: "),
        ((tmp_path / "missing.pth", tmp_path / "x.pth"), "missing.pth: no such file"),
    ]:
        status, _, err_text = _cli(capsys, "export", *args)
        lines = err_text.strip().splitlines()
        assert status == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err_text
    assert out.read_bytes() == b"precious"
    swin = {"backbone.patch_embed.projection.weight": torch.randn(8, 3, 4, 4),
            "backbone.layers.0.blocks.0.attn.w_msa.qkv.weight": torch.randn(24, 8)}
    torch.save({"state_dict": swin}, tmp_path / "swin.pth")
    done = run_selfsup("export", tmp_path / "swin.pth", tmp_path / "v.pth", "--to", "torchvision")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr  # one line, from a real process
    assert ("--to torchvision: no installed plugin converts this backbone (keys patch_embed.projection.weight, "
            "layers.0.blocks.0.attn.w_msa.qkv.weight, ...)") in done.stderr and "use --to raw" in done.stderr


def test_export_to_timm_checks_a_vit_against_timm_and_drops_the_mask_token(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    timm_vit = pytest.importorskip("timm.models.vision_transformer")
    reference = timm_vit.VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    state = {f"backbone.{k}": v for k, v in reference.state_dict().items()}
    state["backbone.mask_token"] = torch.zeros(1, 1, 32)
    torch.save({"state_dict": state}, tmp_path / "simmim.pth")
    status, out_text, err_text = _cli(capsys, "export", tmp_path / "simmim.pth", tmp_path / "vit.safetensors", "--to", "timm")
    assert status == 0, err_text
    assert "matches timm's VisionTransformer" in out_text and "dropped mask_token (1 tensor)" in out_text
    fresh = timm_vit.VisionTransformer(img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=0)
    fresh.load_state_dict(load_safetensors(tmp_path / "vit.safetensors"), strict=True)


# -- import -----------------------------------------------------------------------------------
def test_import_weights_drops_the_classifier_and_prints_the_init_cfg(tmp_path: Path) -> None:
    model = _resnet("resnet18", 3)
    torch.save(model.state_dict(), tmp_path / "resnet18-f37072fd.pth")  # as torchvision's hub cache holds it
    out = tmp_path / "r18_backbone.safetensors"
    done = run_selfsup("import-weights", tmp_path / "resnet18-f37072fd.pth", out, "--from", "torchvision")
    assert done.returncode == 0, done.stderr
    assert "of a ResNet (resnet18)" in done.stdout and "dropped fc.* (2 tensors): classifier" in done.stdout
    assert f'init_cfg = {{ type = "Pretrained", checkpoint = "{out}" }}' in done.stdout
    weights = load_safetensors(out)
    assert set(weights) == {k for k in model.state_dict() if not k.startswith("fc.")}
    assert read_safetensors_metadata(out)["dialect"] == "resnet"


def test_import_weights_takes_the_backbone_of_an_mmcls_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _resnet("resnet18", 4)
    state = {f"backbone.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    state["head.fc.weight"] = torch.randn(10, 512)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "mmcls.pth")
    status, out_text, err_text = _cli(capsys, "import-weights", tmp_path / "mmcls.pth", tmp_path / "b.pth", "--json")
    report = json.loads(out_text)
    assert report["prefix"] == "backbone." and report["kept"] == 120 and report["arch"] == "resnet18"
    assert report["dropped"] == [{"keys": "head.*", "count": 1, "reason": "not under the backbone prefix 'backbone.'"}]
    status, out_text, err_text = _cli(capsys, "import-weights", tmp_path / "mmcls.pth", tmp_path / "c.pth", "--from", "timm", "--prefix", "head.")
    assert status == 2 and "--from timm: these weights do not look like timm ones" in err_text


def test_export_carries_the_backbone_table_of_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _training_checkpoint(tmp_path / "latest.pth", _resnet(), _resnet(seed=1))
    (tmp_path / "config.toml").write_text('[model]\ntype = "MoCo"\n[model.backbone]\ntype = "ResNet"\ndepth = 18\n'
                                          'norm_cfg = { type = "SyncBN" }\n')
    status, out_text, _ = _cli(capsys, "export", tmp_path, tmp_path / "r18.safetensors")
    assert status == 0
    assert 'the run built this backbone from (its config.toml):\n    [model.backbone]\n    type = "ResNet"' in out_text
    metadata = read_safetensors_metadata(tmp_path / "r18.safetensors")
    assert json.loads(metadata["backbone_config"]) == {"type": "ResNet", "depth": 18, "norm_cfg": {"type": "SyncBN"}}
    assert metadata["source"] == "latest.pth" and metadata["key_names"] == "raw"


def test_export_with_hash_names_the_file_as_torch_hub_checks_it(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib
    import re

    _training_checkpoint(tmp_path / "latest.pth", _resnet(), _resnet(seed=1))
    status, out_text, _ = _cli(capsys, "export", tmp_path / "latest.pth", tmp_path / "r18.pth", "--hash", "--json")
    assert status == 0
    report = json.loads(out_text)
    written = Path(report["out"])
    assert not (tmp_path / "r18.pth").exists() and written.parent == tmp_path
    sha = hashlib.sha256(written.read_bytes()).hexdigest()
    assert report["sha256"] == sha and written.name == f"r18-{sha[:8]}.pth"
    assert re.search(r"-([a-f0-9]*)\.", written.name).group(1) == sha[:8]  # torch.hub's HASH_REGEX


# -- the selfsup_convert_backbone hook --------------------------------------------------------
def test_a_plugin_converts_its_own_backbone_through_the_hook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from selfsup_core.api import ConvertedBackbone, get_plugin_manager

    calls = []

    def convert(state, direction, layout, backbone):
        calls.append((direction, layout, backbone))
        if "patch_embed.projection.weight" not in state:
            return None
        renamed = {k.replace("projection", "proj"): v for k, v in state.items() if k != "head.w"}
        return ConvertedBackbone(renamed, {"library": layout, "arch": "Swin", "note": "renamed for the other library"},
                                 [{"keys": "head.w", "count": 1, "reason": "classifier"}])

    state = {"backbone.patch_embed.projection.weight": torch.ones(8, 3, 4, 4), "backbone.head.w": torch.ones(2)}
    torch.save({"state_dict": state}, tmp_path / "latest.pth")
    (tmp_path / "config.toml").write_text('[model.backbone]\ntype = "SwinTransformer"\nwindow_size = 7\n')
    manager = get_plugin_manager()
    manager.register(SimpleNamespace(selfsup_convert_backbone=convert), name="swin-layouts")
    try:
        status, out_text, err_text = _cli(capsys, "export", tmp_path, tmp_path / "s.safetensors", "--to", "timm")
    finally:
        manager.unregister(name="swin-layouts")
    assert status == 0, err_text
    assert calls == [("export", "timm", {"type": "SwinTransformer", "window_size": 7})]  # the first answer wins
    assert "  renamed for the other library\n  dropped head.w (1 tensor): classifier" in out_text
    assert set(load_safetensors(tmp_path / "s.safetensors")) == {"patch_embed.proj.weight"}
    assert read_safetensors_metadata(tmp_path / "s.safetensors")["arch"] == "Swin"
    status, _, err_text = _cli(capsys, "export", tmp_path, tmp_path / "t.pth", "--to", "timm")  # no plugin now
    assert status == 2 and err_text == (
        "error: --to timm: no installed plugin converts this backbone (type SwinTransformer, keys "
        "patch_embed.projection.weight, head.w, ...) to timm key names (selfsup-models converts ResNets and ViTs); "
        "use --to raw\n")
