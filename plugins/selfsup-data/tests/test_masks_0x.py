"""SimMIMMaskGenerator counts masked squares as MMSelfSup 0.x does:
``int(np.ceil(token_count * mask_ratio))`` in floating point, float noise included."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup_data.masks import SimMIMMaskGenerator


@pytest.mark.parametrize(("input_size", "mask_patch", "ratio"),
                         [(320, 32, 0.07), (192, 32, 0.6), (224, 32, 0.75), (320, 32, 0.7), (96, 32, 0.35)])
def test_mask_count_is_0x_ceil(input_size, mask_patch, ratio):
    gen = SimMIMMaskGenerator(input_size=input_size, mask_patch_size=mask_patch, model_patch_size=4,
                              mask_ratio=ratio)
    count = (input_size // mask_patch) ** 2
    want = int(np.ceil(count * ratio))                     # 0.x's formula
    assert gen.mask_count == want
    mask = gen(torch.zeros(3, input_size, input_size))["mask"]
    assert int(mask.sum()) == want * (mask_patch // 4) ** 2


def test_ratio_007_of_100_squares_masks_8():
    assert 100 * 0.07 > 7                                  # 7.000000000000001
    assert SimMIMMaskGenerator(input_size=320, mask_patch_size=32, model_patch_size=4, mask_ratio=0.07).mask_count == 8
