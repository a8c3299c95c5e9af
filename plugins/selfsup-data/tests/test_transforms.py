"""Transforms: torchvision v2 registered by name, and the effect of each of our own."""
from __future__ import annotations

import inspect
import math
from importlib import metadata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image
from selfsup_core.build import build
from selfsup_core.errors import ConfigError

from selfsup_data.transforms import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    GaussianBlur,
    Lighting,
    RandomAppliedTrans,
    Solarization,
    ToDtype,
    apply_transforms,
)

OURS = {"GaussianBlur", "ToDtype"}  # names where our class replaces torchvision's


def _entry_points() -> dict[str, str]:
    dist = metadata.distribution("selfsup-data")
    return {ep.name: ep.value for ep in dist.entry_points if ep.group == "selfsup.transforms"}


def _torchvision_transforms() -> set[str]:
    return {n for n, o in vars(T).items() if not n.startswith("_") and inspect.isclass(o)
            and issubclass(o, T.Transform) and o is not T.Transform}


def test_every_torchvision_v2_transform_is_registered_by_its_name():
    eps = _entry_points()
    for name in sorted(_torchvision_transforms()):
        assert name in eps, f"{name} of torchvision {torchvision.__version__} is not registered"
        if name in OURS:
            assert eps[name].startswith("selfsup_data."), name
        else:
            assert eps[name] == f"torchvision.transforms.v2:{name}"
    # nothing that is not a transform (enums, functions, the base class)
    for name in ("Transform", "InterpolationMode", "AutoAugmentPolicy", "functional", "query_size"):
        assert name not in eps
    # registered torchvision names exist in this torchvision (newer ones may be missing in older ones)
    for name, value in eps.items():
        if value.startswith("torchvision.") and hasattr(T, name):
            assert issubclass(getattr(T, name), T.Transform)


def test_build_torchvision_transform_through_the_core():
    crop = build({"type": "RandomResizedCrop", "size": 32}, "transforms")
    assert isinstance(crop, T.RandomResizedCrop)
    out = crop(torch.zeros(3, 50, 40, dtype=torch.uint8))
    assert out.shape == (3, 32, 32)
    composed = build({"type": "RandomApply", "transforms": [{"type": "RandomHorizontalFlip", "p": 1.0}], "p": 1.0},
                     "transforms")
    x = torch.arange(6, dtype=torch.uint8).view(1, 2, 3)
    assert torch.equal(composed(x), x.flip(-1))


def test_wrong_key_gives_config_error():
    with pytest.raises(ConfigError, match="siz"):
        build({"type": "RandomResizedCrop", "siz": 32}, "transforms")
    with pytest.raises(ConfigError, match="sigma_max"):
        build({"type": "GaussianBlur", "sigma_maxx": 2.0}, "transforms")
    with pytest.raises(ConfigError):
        build({"type": "Solarization", "threshold": "high"}, "transforms")


def test_bad_values_name_the_class():
    with pytest.raises(ConfigError, match="GaussianBlur.*sigma_min"):
        build({"type": "GaussianBlur", "sigma_min": 3.0, "sigma_max": 2.0}, "transforms")
    with pytest.raises(ValueError, match="Solarization: p"):
        Solarization(p=1.5)
    with pytest.raises(ValueError, match="ToDtype: unknown dtype"):
        ToDtype("float33")


def test_our_transforms_are_built_by_name():
    blur = build({"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5}, "transforms")
    assert isinstance(blur, GaussianBlur) and blur.kernel_size == 13
    applied = build({"type": "RandomAppliedTrans", "p": 0.8,
                     "transforms": [{"type": "ColorJitter", "brightness": 0.4}]}, "transforms")
    assert isinstance(applied, RandomAppliedTrans) and isinstance(applied.transforms[0], T.ColorJitter)
    to_float = build({"type": "ToDtype", "dtype": "float32", "scale": True}, "transforms")
    assert to_float(torch.full((1, 1, 1), 255, dtype=torch.uint8)).item() == 1.0


# -- Solarization -------------------------------------------------------------------------------------------
def test_solarization_inverts_exactly_the_pixels_at_or_above_threshold():
    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    out = Solarization(threshold=128, p=1.0)(values)
    expected = torch.where(values >= 128, 255 - values, values)
    assert torch.equal(out, expected)
    assert out.view(-1)[127] == 127 and out.view(-1)[128] == 127 and out.view(-1)[255] == 0
    # PIL image, same numbers
    pil = Image.fromarray(values[0].numpy())
    assert np.array_equal(np.asarray(Solarization(threshold=128, p=1.0)(pil)), expected[0].numpy())
    # float image: threshold / 255 and 1 - v
    fl = values.float() / 255
    assert torch.allclose(Solarization(threshold=128, p=1.0)(fl), expected.float() / 255, atol=1e-6)
    # p = 0 leaves it alone
    assert torch.equal(Solarization(threshold=128, p=0.0)(values), values)


# -- GaussianBlur -----------------------------------------------------------------------------------------------
def test_gaussian_blur_p0_is_identity():
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert GaussianBlur(p=0.0)(img) is img


def test_gaussian_blur_fixed_sigma_equals_hand_built_kernel():
    torch.manual_seed(0)
    img = torch.rand(3, 16, 18)
    sigma, k = 1.3, 7
    out = GaussianBlur(sigma_min=sigma, sigma_max=sigma, p=1.0, kernel_size=k)(img)
    taps = [math.exp(-(i - 3) ** 2 / (2 * sigma ** 2)) for i in range(k)]
    kernel1d = torch.tensor(taps) / sum(taps)
    kernel2d = (kernel1d[:, None] * kernel1d[None, :]).expand(3, 1, k, k)
    ref = F.conv2d(F.pad(img[None], (3, 3, 3, 3), mode="reflect"), kernel2d, groups=3)[0]
    assert torch.allclose(out, ref, atol=1e-6)
    # uint8 and PIL inputs: the same blur, rounded
    img8 = (img * 255).round().to(torch.uint8)
    ref8 = F.conv2d(F.pad(img8[None].float(), (3, 3, 3, 3), mode="reflect"), kernel2d, groups=3)[0]
    out8 = GaussianBlur(sigma_min=sigma, sigma_max=sigma, p=1.0, kernel_size=k)(img8)
    assert out8.dtype == torch.uint8
    assert (out8.float() - ref8).abs().max() <= 0.5 + 1e-3
    pil = Image.fromarray(img8.permute(1, 2, 0).numpy())
    out_pil = GaussianBlur(sigma_min=sigma, sigma_max=sigma, p=1.0, kernel_size=k)(pil)
    assert isinstance(out_pil, Image.Image) and out_pil.mode == "RGB"
    assert np.array_equal(np.asarray(out_pil), out8.permute(1, 2, 0).numpy())


def test_gaussian_blur_draws_sigma_from_torch_rng():
    img = torch.rand(1, 12, 12)
    blur = GaussianBlur(sigma_min=0.1, sigma_max=2.0, p=1.0)
    torch.manual_seed(3)
    a = blur(img)
    torch.manual_seed(3)
    assert torch.equal(a, blur(img))
    assert not torch.equal(a, blur(img))


# -- Lighting -----------------------------------------------------------------------------------------------------
def test_lighting_alphastd_zero_is_identity():
    img = torch.rand(3, 5, 5)
    assert Lighting(alphastd=0.0)(img) is img


def test_lighting_adds_pca_offset_per_channel():
    img = torch.rand(3, 5, 5)
    torch.manual_seed(7)
    out = Lighting(alphastd=0.1)(img)
    torch.manual_seed(7)
    alpha = torch.randn(3) * 0.1
    val, vec = torch.tensor(IMAGENET_EIGVAL), torch.tensor(IMAGENET_EIGVEC)
    offset = vec @ (alpha * val)  # rgb[i] = sum_j eigvec[i, j] * alpha[j] * eigval[j]
    assert torch.allclose(out, img + offset[:, None, None], atol=1e-6)
    # the offset is constant over the image and differs between channels
    diff = out - img
    assert torch.allclose(diff, diff[:, :1, :1].expand_as(diff), atol=1e-6)
    # custom eigen decomposition: identity eigvec, eigval (1, 0, 0) -> only red moves, by alpha[0]
    torch.manual_seed(7)
    out2 = Lighting(alphastd=0.1, eigval=[1.0, 0.0, 0.0], eigvec=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])(img)
    assert torch.allclose(out2 - img, torch.tensor([alpha[0], 0.0, 0.0])[:, None, None].expand_as(img), atol=1e-6)


# -- RandomAppliedTrans ---------------------------------------------------------------------------------------------
def test_random_applied_trans_p0_and_p1():
    x = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    flips = [T.RandomHorizontalFlip(p=1.0), T.RandomVerticalFlip(p=1.0)]
    assert torch.equal(RandomAppliedTrans(flips, p=1.0)(x), x.flip(-1).flip(-2))
    assert torch.equal(RandomAppliedTrans(flips, p=0.0)(x), x)
    torch.manual_seed(0)
    rate = sum(not torch.equal(RandomAppliedTrans(flips, p=0.3)(x), x) for _ in range(400)) / 400
    assert abs(rate - 0.3) < 0.08


def test_apply_transforms_merges_extra_outputs():
    def with_mask(img):
        return {"img": img + 1, "mask": torch.ones(2, 2, dtype=torch.bool)}

    out = apply_transforms([with_mask, lambda img: img * 2], torch.zeros(1, 2, 2))
    assert set(out) == {"img", "mask"}
    assert torch.equal(out["img"], torch.full((1, 2, 2), 2.0))
    with pytest.raises(ValueError, match="without an 'img' key"):
        apply_transforms([lambda img: {"mask": 1}], torch.zeros(1))
