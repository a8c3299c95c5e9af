"""Every component of this distribution is validated by the core from TOML: no constructor
swallows unknown keys, so a typo is the core's ConfigError, never a TypeError inside."""
from __future__ import annotations

import pytest

from selfsup_core import registry
from selfsup_core.build import accepted_parameters, build
from selfsup_core.errors import ConfigError

KINDS = ("backbones", "necks", "heads", "memories")
COMPONENTS = [
    (kind, component.name)
    for kind in KINDS
    for component in registry.current()[kind].components()
    if component.dist == "selfsup-models"
]


def test_the_distribution_registers_its_components():
    names = {name for _, name in COMPONENTS}
    assert {"ResNet", "VisionTransformer", "NonLinearNeck", "ContrastiveHead", "SimpleMemory"} <= names


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_every_component_has_a_closed_signature(kind, name):
    factory = registry.current()[kind].get(name)
    _, open_ended = accepted_parameters(factory)
    assert not open_ended, f"{name} accepts **kwargs: the core cannot catch a misspelt key"


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_a_misspelt_key_is_a_config_error(kind, name):
    with pytest.raises(ConfigError, match=r"no_such_argument: unknown argument of " + name):
        build({"type": name, "no_such_argument": 1}, kind)
