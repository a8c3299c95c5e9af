"""Mask generators: exact masked counts at the right granularity, blocks inside the grid."""
from __future__ import annotations

import math

import pytest
import torch
from selfsup_core.build import build
from selfsup_core.errors import ConfigError

from selfsup_data.masks import BEiTMaskGenerator, BlockwiseMaskGenerator, MaskingGenerator, SimMIMMaskGenerator
from selfsup_data.transforms import apply_transforms


@pytest.mark.parametrize(("input_size", "mask_patch", "model_patch", "ratio"),
                         [(192, 32, 4, 0.6), (32, 8, 4, 0.5), (224, 32, 16, 0.75), (64, 16, 16, 0.0), (64, 16, 8, 1.0)])
def test_simmim_masks_exact_ratio_at_mask_patch_granularity(input_size, mask_patch, model_patch, ratio):
    gen = SimMIMMaskGenerator(input_size=input_size, mask_patch_size=mask_patch, model_patch_size=model_patch,
                              mask_ratio=ratio)
    grid = input_size // mask_patch
    scale = mask_patch // model_patch
    expected_patches = math.ceil(grid * grid * ratio - 1e-9)
    for _ in range(5):
        out = gen(torch.zeros(3, input_size, input_size))
        mask = out["mask"]
        assert mask.dtype == torch.bool
        assert mask.shape == (input_size // model_patch, input_size // model_patch)
        # constant on every mask-patch block
        blocks = mask.view(grid, scale, grid, scale).permute(0, 2, 1, 3).reshape(grid, grid, -1)
        assert torch.all(blocks.all(-1) | ~blocks.any(-1))
        assert int(blocks[..., 0].sum()) == expected_patches
        assert int(mask.sum()) == expected_patches * scale * scale


def test_simmim_default_is_22_of_36_patches():
    mask = SimMIMMaskGenerator()(torch.zeros(3, 192, 192))["mask"]
    assert mask.shape == (48, 48) and int(mask.sum()) == 22 * 64


def test_mask_generator_keeps_image_and_adds_to_dict():
    img = torch.rand(3, 32, 32)
    gen = SimMIMMaskGenerator(input_size=32, mask_patch_size=8, model_patch_size=4)
    out = gen(img)
    assert out["img"] is img
    out2 = gen({"img": img, "other": 1})
    assert out2["other"] == 1 and out2["mask"].shape == (8, 8)
    merged = apply_transforms([lambda x: x * 2, gen], img)
    assert torch.equal(merged["img"], img * 2) and merged["mask"].shape == (8, 8)


def test_simmim_is_seeded_by_torch():
    gen = SimMIMMaskGenerator(input_size=64, mask_patch_size=16, model_patch_size=4)
    torch.manual_seed(1)
    a = gen.generate()
    torch.manual_seed(1)
    assert torch.equal(a, gen.generate())


@pytest.mark.parametrize(("size", "count", "min_p", "max_p"),
                         [(14, 75, 16, None), ((6, 10), 30, 4, 12), (8, 64, 4, None), (5, 3, 4, None), (14, 0, 16, None)])
def test_blockwise_masks_exact_count_within_bounds(size, count, min_p, max_p):
    gen = BlockwiseMaskGenerator(input_size=size, num_masking_patches=count, min_num_patches=min_p,
                                 max_num_patches=max_p, min_aspect=0.3)
    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    for _ in range(20):
        mask = gen(torch.zeros(3, 4, 4))["mask"]
        assert mask.shape == (h, w) and mask.dtype == torch.bool
        assert int(mask.sum()) == count


def test_blockwise_rectangles_respect_area_and_aspect():
    gen = BlockwiseMaskGenerator(input_size=14, num_masking_patches=75, min_num_patches=16, min_aspect=0.3)
    assert gen.max_num_patches == 75
    assert gen.log_aspect_ratio == pytest.approx((math.log(0.3), math.log(1 / 0.3)))
    torch.manual_seed(0)
    for _ in range(20):
        mask = torch.zeros(14, 14, dtype=torch.bool)
        added = gen._add_block(mask, 40)
        if added:
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
            assert h * w == added == int(mask.sum())  # one solid rectangle inside the grid
            assert 1 <= added <= 40
            assert 0.3 / 2 <= h / w <= 2 / 0.3  # aspect within range (up to rounding of small sides)


def test_blockwise_built_by_name_and_aliases():
    gen = build({"type": "BlockwiseMaskGenerator", "input_size": 14, "num_masking_patches": 75,
                 "min_num_patches": 16}, "transforms")
    assert isinstance(gen, BlockwiseMaskGenerator)
    assert issubclass(BEiTMaskGenerator, BlockwiseMaskGenerator) and issubclass(MaskingGenerator, BlockwiseMaskGenerator)
    assert isinstance(build({"type": "SimMIMMaskGenerator"}, "transforms"), SimMIMMaskGenerator)
    with pytest.raises(ConfigError, match="mask_ratio"):
        build({"type": "SimMIMMaskGenerator", "mask_ration": 0.5}, "transforms")
    with pytest.raises(ConfigError, match="num_masking_patches"):
        build({"type": "BlockwiseMaskGenerator", "input_size": 14}, "transforms")


def test_bad_values():
    with pytest.raises(ValueError, match="divisible"):
        SimMIMMaskGenerator(input_size=100, mask_patch_size=32)
    with pytest.raises(ValueError, match="num_masking_patches"):
        BlockwiseMaskGenerator(input_size=4, num_masking_patches=17)
