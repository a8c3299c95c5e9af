"""``selfsup-run count-params`` (contributed by selfsup-models): real models, and a real
subprocess for the exit status and the output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup_core import cli

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "configs" / "simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml"


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *argv], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


# -- count-params ---------------------------------------------------------------------------
RESNET50_SIMCLR = """
[model]
type = "SimCLR"

[model.backbone]
type = "ResNet"
depth = 50
in_channels = 3
out_indices = [4]

[model.neck]
type = "NonLinearNeck"
in_channels = 2048
hid_channels = 2048
out_channels = 128
num_layers = 2
with_avg_pool = true

[model.head]
type = "ContrastiveHead"
temperature = 0.1
"""

BYOL_TINY = """
[model]
type = "BYOL"

[model.backbone]
type = "ResNet"
depth = 18
in_channels = 1
stem_type = "cifar"
out_indices = [4]

[model.neck]
type = "NonLinearNeck"
in_channels = 512
hid_channels = 64
out_channels = 32
num_layers = 2
with_avg_pool = true

[model.head]
type = "LatentPredictHead"
[model.head.predictor]
type = "NonLinearNeck"
in_channels = 32
hid_channels = 64
out_channels = 32
num_layers = 2
with_avg_pool = false
"""


def _count_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert cli.main(["count-params", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_count_params_resnet50_matches_torchvision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torchvision = pytest.importorskip("torchvision")
    config = tmp_path / "simclr_r50.toml"
    config.write_text(RESNET50_SIMCLR)
    report = _count_json(capsys, str(config))
    rows = {r["name"]: r for r in report["modules"]}
    reference = torchvision.models.resnet50(weights=None)
    expected = sum(p.numel() for name, p in reference.named_parameters() if not name.startswith("fc."))
    assert rows["backbone"]["parameters"] == rows["backbone"]["trainable"] == expected == 23_508_032
    assert rows["backbone"]["buffers"] == sum(b.numel() for b in reference.buffers())
    assert list(rows) == ["backbone", "neck", "head"] and rows["head"]["parameters"] == 0
    assert report["total"]["parameters"] == sum(r["parameters"] for r in rows.values())
    assert report["model"] == "SimCLR" and report["depth"] == 1 and report["not_trainable"] == []


def test_count_params_momentum_copy_is_not_trainable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "byol.toml"
    config.write_text(BYOL_TINY)
    assert cli.main(["count-params", str(config)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == f"{config}: model BYOL"
    assert table[1].split() == ["module", "parameters", "trainable", "buffers"]
    assert [line.split()[0] for line in table[2:7]] == ["backbone", "neck", "head", "target_backbone",
                                                        "target_neck"]
    assert table[2].split()[1:4] == ["11,167,680", "(11.17", "M)"]
    assert table[-2].startswith("total")
    assert table[-1].endswith("target_backbone, target_neck")

    report = _count_json(capsys, str(config))
    rows = {r["name"]: r for r in report["modules"]}
    assert rows["target_backbone"]["parameters"] == rows["backbone"]["parameters"] == 11_167_680
    assert rows["target_backbone"]["trainable"] == rows["target_neck"]["trainable"] == 0
    assert rows["neck"]["trainable"] == rows["target_neck"]["parameters"] > 0
    assert report["total"]["trainable"] == sum(rows[k]["parameters"] for k in ("backbone", "neck", "head"))
    assert report["not_trainable"] == ["target_backbone", "target_neck"]


def test_count_params_depth_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "byol.toml"
    config.write_text(BYOL_TINY)
    shallow = _count_json(capsys, str(config))
    deep = _count_json(capsys, str(config), "--depth", "2")
    names = [r["name"] for r in deep["modules"]]
    assert names[:4] == ["backbone.conv1", "backbone.bn1", "backbone.relu", "backbone.maxpool"]
    assert "backbone.layer4" in names and "target_neck.fc0" in names
    assert deep["not_trainable"] == ["target_backbone", "target_neck"]
    assert deep["total"] == shallow["total"]
    layer_sum = sum(r["parameters"] for r in deep["modules"] if r["name"].startswith("backbone."))
    assert layer_sum == next(r["parameters"] for r in shallow["modules"] if r["name"] == "backbone")

    smaller = _count_json(capsys, str(config), "--cfg-options", "model.neck.hid_channels=32")
    assert smaller["total"]["parameters"] < shallow["total"]["parameters"]
    assert cli.main(["count-params", str(config), "--depth", "0"]) == 2
    assert "--depth must be 1 or more" in capsys.readouterr().err


def test_count_params_subprocess_on_an_example_config() -> None:
    result = run_cli("count-params", str(EXAMPLE.relative_to(ROOT)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml: model SimCLR")
    assert lines[2].split()[:2] == ["backbone", "11,167,680"]
    assert lines[-1].startswith("total")


def test_tool_modules_import_no_torch() -> None:
    code = ("import selfsup_models.tools.commands, selfsup_models.tools.count_params, selfsup_models.tools.export, "
            "selfsup_models.layouts.timm, sys; assert 'torch' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
