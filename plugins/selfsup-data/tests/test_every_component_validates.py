"""Every component of this distribution is validated by the core from TOML: no constructor
of ours swallows unknown keys, so a typo is the core's ConfigError, never a TypeError."""
from __future__ import annotations

import pytest

from selfsup_core.testing import assert_validated_from_config, components_of

OURS = components_of("selfsup-data", ("data_sources", "datasets", "transforms"), own_modules="selfsup_data")


def test_the_distribution_registers_its_components():
    names = {name for _, name in OURS}
    assert {"FashionMNIST", "ImageFolder", "MultiViewDataset", "OneViewDataset", "GaussianBlur", "Solarization"} <= names


@pytest.mark.parametrize(("kind", "name"), OURS)
def test_a_misspelt_key_is_a_config_error(kind, name):
    assert_validated_from_config(kind, name)
