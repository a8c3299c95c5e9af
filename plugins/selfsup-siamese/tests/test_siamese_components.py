"""The distribution's entry points: every component is listed and validated by the core
from TOML (a misspelt key is a ConfigError, never a TypeError from inside)."""
from __future__ import annotations

import pytest
from selfsup_core.testing import assert_validated_from_config, components_of

OURS = components_of("selfsup-siamese", own_modules="selfsup_siamese")


def test_the_distribution_registers_its_components() -> None:
    assert sorted(OURS) == [("algorithms", "BYOL"), ("algorithms", "BarlowTwins"), ("algorithms", "SimSiam"),
                            ("hooks", "SimSiamHook")]


@pytest.mark.parametrize(("kind", "name"), OURS)
def test_a_misspelt_key_is_a_config_error(kind: str, name: str) -> None:
    assert_validated_from_config(kind, name)
