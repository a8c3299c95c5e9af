"""Every component of this distribution is validated by the core from TOML: no constructor
swallows unknown keys, so a typo is the core's ConfigError, never a TypeError inside."""
from __future__ import annotations

import pytest

from selfsup_core.testing import assert_validated_from_config, components_of

COMPONENTS = components_of("selfsup-models", ("backbones", "necks", "heads", "memories"))


def test_the_distribution_registers_its_components():
    names = {name for _, name in COMPONENTS}
    assert {"ResNet", "VisionTransformer", "NonLinearNeck", "ContrastiveHead", "SimpleMemory"} <= names


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_a_misspelt_key_is_a_config_error(kind, name):
    assert_validated_from_config(kind, name)
