"""The distribution's entry points: every component is found and validated from TOML, and the
shipped configs pass ``selfsup-run --check``."""
from __future__ import annotations

from pathlib import Path

import pytest
from selfsup_core import cli
from selfsup_core.testing import assert_validated_from_config, components_of

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
EXPECTED = {("algorithms", "DeepCluster"), ("algorithms", "ODC"), ("algorithms", "SwAV"),
            ("hooks", "DeepClusterHook"), ("hooks", "ODCHook"), ("hooks", "SwAVHook")}


def test_every_component_is_registered_and_validated() -> None:
    assert set(components_of("selfsup-clustering")) == EXPECTED
    for kind, name in sorted(EXPECTED):
        assert_validated_from_config(kind, name)


@pytest.mark.parametrize("config", sorted(p.name for prefix in ("deepcluster_", "odc_", "swav_")
                                          for p in CONFIGS.glob(f"{prefix}*.toml")))
def test_shipped_configs_pass_check(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([str(CONFIGS / config), "--check"]) == 0, capsys.readouterr().err
    assert "OK, model" in capsys.readouterr().out


def test_a_misspelt_hook_key_is_reported_with_its_path(capsys: pytest.CaptureFixture[str]) -> None:
    config = CONFIGS / "deepcluster_resnet18_1xb256-steplr-200e_fashion-mnist.toml"
    assert cli.main([str(config), "--check", "--cfg-options", "hooks.0.unif_samplin=true"]) == 2
    assert "hooks.0.unif_samplin: unknown argument of DeepClusterHook" in capsys.readouterr().err
