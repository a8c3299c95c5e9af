"""``selfsup-run export-hub``: the quick start's backbone (ResNet-18 width 16, 1-channel small
stem) from a tiny run loads in a fresh Python with only torch and gives the same features."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from selfsup_core.api import Trainer, load_config
from selfsup_core.api import cli_main as main

pytest.importorskip("selfsup_data")
from selfsup_data.testing import SMALL_RUN_VALUES, config_on_npz, fashion_mnist_npz  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
QUICK_START = ROOT / "examples" / "configs" / "simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"

FRESH = """
import sys, torch
program = torch.export.load(sys.argv[1]).module()
data = torch.load(sys.argv[2])
got = program(data["x"])
assert not [m for m in sys.modules if m.startswith("selfsup")], "selfsup was imported"
difference = float((got - data["features"]).abs().max())
if len(sys.argv) > 3:  # the ONNX file too, with onnxruntime
    import onnxruntime
    session = onnxruntime.InferenceSession(sys.argv[3], providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: data["x"].numpy()})[0]
    difference = max(difference, float(abs(onnx_out - data["features"].numpy()).max()))
print(difference, tuple(got.shape))
"""


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("hub")
    npz, _ = fashion_mnist_npz(tmp / "tiny.npz", num_samples=16)
    values = {**SMALL_RUN_VALUES, "model.backbone.base_channels": 16, "model.backbone.stem_channels": 16,
              "data.samples_per_gpu": 16, "runner.precision": "fp32", "log_config.plot": False}
    config, _ = config_on_npz(QUICK_START, npz, tmp / "quick.toml", values)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(load_config(config), work_dir=tmp / "run", device="cpu").run()
    finally:
        torch.set_num_threads(threads)
    return tmp / "run"


def test_export_hub_loads_with_torch_only(work_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "hub"
    assert main(["export-hub", str(work_dir), str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"backbone.pt2", "model.safetensors", "config.toml", "README.md"} <= set(report["files"])
    assert report["input"] == [None, 1, 28, 28] and report["output"] == [128, 4, 4]
    card = (out / "README.md").read_text()
    assert "SimCLR ResNet backbone" in card and "base_channels=16" in card and "last training loss" in card

    # the features the selfsup backbone computes, for the fresh process to match
    from selfsup_core.api import read_state_dict
    from selfsup_models import build_backbone

    backbone = build_backbone("ResNet", depth=18, in_channels=1, stem_type="cifar", out_indices=[4],
                              base_channels=16, stem_channels=16)
    state, _ = read_state_dict(out / "model.safetensors")
    backbone.load_state_dict(state)
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # another batch size than exported
    with torch.no_grad():
        features = backbone.eval()(x)[-1]
    torch.save({"x": x, "features": features}, tmp_path / "expected.pt")
    onnx = [str(out / "backbone.onnx")] if "backbone.onnx" in report["files"] else []
    assert bool(onnx) == report["onnx"].startswith("written")
    proc = subprocess.run([sys.executable, "-c", FRESH, str(out / "backbone.pt2"), str(tmp_path / "expected.pt"), *onnx],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    difference, shape = proc.stdout.split(maxsplit=1)
    assert float(difference) <= 1e-5 and shape.strip() == "(5, 128, 4, 4)"


def test_export_hub_refusals(work_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    assert main(["export-hub", str(work_dir), str(tmp_path / "full")]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep"
    assert main(["export-hub", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "no such checkpoint or work dir" in capsys.readouterr().err


def test_a_timm_architecture_also_gets_timm_files(tmp_path: Path) -> None:
    """A standard ResNet-18 backbone: timm.safetensors + config.json load into timm's resnet18
    (num_classes=0) and give the backbone's features."""
    timm = pytest.importorskip("timm")
    from selfsup_core.api import load_safetensors as load_file
    from selfsup_models.tools.export_hub import export_hub
    from selfsup_models import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("ResNet", depth=18)
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.toml").write_text('[model]\ntype = "SimCLR"\n[model.backbone]\ntype = "ResNet"\ndepth = 18\n')
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}, work / "latest.pth")
    report = export_hub(work, tmp_path / "hub", input_size=32, onnx=False)
    assert report["timm_architecture"] == "resnet18" and "timm.safetensors" in report["files"]
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=0, pretrained=False)
    model.load_state_dict(load_file(tmp_path / "hub" / "timm.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.eval().forward_features(x), backbone.eval()(x)[-1], atol=1e-5)
