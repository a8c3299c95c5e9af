"""Configs shipped in the plugin packages: ``_base_ = "dist::name.toml"`` from anywhere,
``selfsup-run list configs``, and the copies equal to examples/configs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from selfsup_core.cli import main
from selfsup_core.config import load_config
from selfsup_core.packaged_configs import listing, resolve

ROOT = Path(__file__).resolve().parents[1]
QUICK = "simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"
pytest.importorskip("selfsup_contrastive")


def _script():
    spec = importlib.util.spec_from_file_location("package_configs", ROOT / "examples" / "configs" / "package_configs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packaged_copies_are_current_and_resolve_like_the_examples() -> None:
    script = _script()
    assert script.main(["--check"]) == 0
    found = listing()
    names = [n for names in found.values() for n in names]
    examples = sorted(p.name for p in (ROOT / "examples" / "configs").glob("*.toml"))
    assert sorted(n.split("::")[1] for n in names if "/" not in n.split("::")[1]) == examples
    assert "selfsup-data::evaluation/fashion-mnist.toml" in names
    for name in names:
        if "/" in name:
            continue
        dist, file = name.split("::")
        packaged, example = load_config(resolve(name)), load_config(ROOT / "examples" / "configs" / file)
        assert packaged.data == example.data, name


def test_a_config_outside_the_repository_inherits_a_packaged_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mine.toml"
    config.write_text(f'_base_ = "selfsup-contrastive::{QUICK}"\n\n[model.head]\ntemperature = 0.3\n', encoding="utf-8")
    assert main(["train", str(config), "--check"]) == 0
    assert "OK, model SimCLR" in capsys.readouterr().out
    loaded = load_config(config)
    assert loaded.data["model"]["backbone"]["base_channels"] == 16 and loaded.data["model"]["head"]["temperature"] == 0.3
    assert loaded.data["evaluation"]["evaluators"][0]["type"] == "KNN"  # from selfsup-data::evaluation/...


def test_scoped_base_errors_and_listing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('_base_ = "selfsup-contrastiv::x.toml"\n', encoding="utf-8")
    assert main(["show-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "bad.toml: _base_: base 'selfsup-contrastiv::x.toml': no installed distribution" in err
    assert "did you mean 'selfsup-contrastive'" in err
    config.write_text('_base_ = "selfsup-contrastive::simclr_resnet18_1xb256-coslr-200e_fashion-mnst.toml"\n')
    assert main(["show-config", str(config)]) == 2
    assert "did you mean 'simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml'" in capsys.readouterr().err
    config.write_text('_base_ = "selfsup-contrastive::../../selfsup_contrastive/__init__.py"\n')
    assert main(["show-config", str(config)]) == 2
    assert "ships no config" in capsys.readouterr().err
    assert main(["list", "configs"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("configs (selfsup.configs): ") and f"  selfsup-contrastive::{QUICK}\n" in out
