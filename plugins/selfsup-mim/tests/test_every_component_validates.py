"""Every component of this distribution is validated by the core from TOML: a misspelt key
is the core's ConfigError, never a TypeError from inside a constructor."""
from __future__ import annotations

import pytest

from selfsup_core.testing import assert_validated_from_config, components_of

OURS = components_of("selfsup-mim", own_modules="selfsup_mim")


def test_the_distribution_registers_its_components():
    assert set(OURS) == {("algorithms", "MAE"), ("algorithms", "SimMIM"), ("necks", "MAEPretrainDecoder"),
                         ("necks", "SimMIMNeck"), ("heads", "MAEPretrainHead"), ("heads", "SimMIMHead"),
                         ("algorithms", "MaskFeat"), ("algorithms", "CAE"), ("backbones", "MaskFeatViT"),
                         ("backbones", "CAEViT"), ("backbones", "DALLEEncoder"), ("necks", "CAENeck"),
                         ("heads", "MaskFeatPretrainHead"), ("heads", "CAEHead"),
                         ("transforms", "MaskFeatMaskGenerator"),
                         ("transforms", "RandomResizedCropAndInterpolationWithTwoPic"),
                         ("algorithms", "IJEPA"), ("necks", "IJEPAPredictor"), ("heads", "IJEPAHead"),
                         ("hooks", "LinearMomentumUpdate")}


@pytest.mark.parametrize(("kind", "name"), OURS)
def test_a_misspelt_key_is_a_config_error(kind, name):
    assert_validated_from_config(kind, name)
