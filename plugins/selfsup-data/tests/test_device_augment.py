"""Device augmentation: the split, exact agreement with the CPU pipeline for deterministic
settings, the same output distribution for random ones, the batch-dict wrapper and the
dataset -> DataLoader -> device_transform path. Runs on CPU tensors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image
from selfsup_core.build import build
from selfsup_core.engine.data import device_transform_of
from torch.utils.data import DataLoader

from selfsup_data.device_augment import BatchDeviceTransform, DeviceAugment, ToUint8CHW, shift_hue, split_pipeline
from selfsup_data.masks import SimMIMMaskGenerator
from selfsup_data.transforms import GaussianBlur, Lighting, RandomAppliedTrans, Solarization, ToDtype, apply_transforms

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and steadier on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _cpu_batch(transforms: list, images: torch.Tensor) -> torch.Tensor:
    return torch.stack([apply_transforms(transforms, img)["img"].as_subclass(torch.Tensor) for img in images])


def _device_batch(transforms: list, images: torch.Tensor) -> torch.Tensor:
    cpu, device = split_pipeline(transforms)
    return device(_cpu_batch(cpu, images))


# -- the split ------------------------------------------------------------------------------------------------
def test_split_simclr_pipeline():
    pipeline = [
        T.RandomResizedCrop(16), T.RandomHorizontalFlip(),
        RandomAppliedTrans([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
        GaussianBlur(0.1, 2.0, p=0.5), Solarization(p=0.2), T.ToImage(), ToDtype("float32", scale=True),
        T.Normalize(MEAN, STD),
    ]
    cpu, device = split_pipeline(pipeline)
    assert cpu[:2] == pipeline[:2] and isinstance(cpu[2], ToUint8CHW) and len(cpu) == 3
    assert isinstance(device, DeviceAugment)
    assert device.source == ["RandomAppliedTrans", "RandomGrayscale", "GaussianBlur", "Solarization", "ToImage",
                             "ToDtype", "Normalize"]
    img = Image.fromarray(np.zeros((20, 24, 3), np.uint8))
    out = apply_transforms(cpu, img)["img"]
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16) and type(out) is torch.Tensor
    batch = device(torch.stack([out, out]))
    assert batch.dtype == torch.float32 and batch.shape == (2, 3, 16, 16)


def test_split_keeps_leading_conversion_and_moves_flip_after_colour():
    pipeline = [T.ToImage(), T.RandomCrop(8), T.ColorJitter(0.2), T.RandomHorizontalFlip(), T.ToDtype(torch.float32, scale=True)]
    cpu, device = split_pipeline(pipeline)
    assert cpu[:2] == pipeline[:2] and isinstance(cpu[2], ToUint8CHW)
    assert device.source == ["ColorJitter", "RandomHorizontalFlip", "ToDtype"]


def test_split_leaves_mask_generators_on_cpu():
    gen = SimMIMMaskGenerator(input_size=16, mask_patch_size=8, model_patch_size=4)
    cpu, device = split_pipeline([T.RandomResizedCrop(16), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                                  T.Normalize(MEAN, STD), gen])
    assert cpu[-1] is gen and isinstance(cpu[-2], ToUint8CHW)
    out = apply_transforms(cpu, torch.zeros(3, 20, 20, dtype=torch.uint8))
    assert out["img"].shape == (3, 16, 16) and out["mask"].shape == (4, 4)


@pytest.mark.filterwarnings("ignore:The transform `ToTensor\\(\\)` is deprecated")
def test_split_without_colour_ops_only_converts():
    cpu, device = split_pipeline([T.RandomCrop(4), T.ToTensor()])
    assert isinstance(cpu[-1], ToUint8CHW) and device.source == ["ToTensor"]
    x = torch.full((1, 3, 4, 4), 51, dtype=torch.uint8)
    assert torch.allclose(device(x), torch.full((1, 3, 4, 4), 0.2))


@pytest.mark.parametrize(("pipeline", "name"), [
    ([T.ColorJitter(0.4), T.RandomResizedCrop(8)], "RandomResizedCrop"),
    ([T.RandomGrayscale(), T.RandomEqualize()], "RandomEqualize"),
    ([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD), T.ColorJitter(0.4)], "ColorJitter"),
    ([RandomAppliedTrans([T.ColorJitter(0.4), T.RandomRotation(10)], p=0.5)], "RandomRotation"),
])
def test_unsupported_transform_after_split_is_named(pipeline, name):
    with pytest.raises(ValueError, match=f"split_pipeline: {name} \\(pipeline item"):
        split_pipeline(pipeline)


# -- deterministic settings: same numbers as the CPU pipeline ------------------------------------------------------
def test_deterministic_ops_match_cpu_exactly_on_float_images():
    pipeline = [ToDtype("float32", scale=True), T.RandomGrayscale(p=1.0), T.RandomHorizontalFlip(p=1.0),
                GaussianBlur(sigma_min=1.1, sigma_max=1.1, p=1.0), Solarization(threshold=100, p=1.0),
                T.RandomVerticalFlip(p=1.0), T.Normalize(MEAN, STD)]
    images = _images()
    cpu_out = _cpu_batch(pipeline, images)
    dev_out = _device_batch(pipeline, images)
    assert dev_out.shape == cpu_out.shape == (6, 3, 12, 12)
    assert torch.allclose(dev_out, cpu_out, atol=1e-5)


def test_deterministic_ops_on_pil_images_within_one_level():
    pipeline = [T.RandomGrayscale(p=1.0), Solarization(threshold=128, p=1.0), T.RandomHorizontalFlip(p=1.0),
                GaussianBlur(sigma_min=0.8, sigma_max=0.8, p=1.0), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                T.Normalize([0.0] * 3, [1.0] * 3)]
    pils = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in _images()]
    cpu_out = torch.stack([apply_transforms(pipeline, p)["img"].as_subclass(torch.Tensor) for p in pils])
    cpu, device = split_pipeline(pipeline)
    dev_out = device(torch.stack([apply_transforms(cpu, p)["img"] for p in pils]))
    # PIL rounds after each op (gray, blur); the device path keeps floats
    assert (dev_out - cpu_out).abs().max() <= 2 / 255


@pytest.mark.parametrize("jitter", [
    dict(brightness=(1.3, 1.3)), dict(contrast=(0.6, 0.6)), dict(saturation=(1.4, 1.4)), dict(hue=(0.1, 0.1)),
    dict(hue=(-0.3, -0.3)),
])
def test_single_colour_op_with_fixed_factor_matches_torchvision(jitter):
    images = _images()
    pipeline = [ToDtype("float32", scale=True), T.ColorJitter(**jitter)]
    assert torch.allclose(_device_batch(pipeline, images), _cpu_batch(pipeline, images), atol=1e-5)
    # on uint8 images torchvision truncates/rounds each op: within one level
    uint8_pipeline = [T.ColorJitter(**jitter), T.ToDtype(torch.float32, scale=True)]
    diff = _device_batch(uint8_pipeline, images) - _cpu_batch(uint8_pipeline, images)
    assert diff.abs().max() <= 1.5 / 255  # contrast: torchvision floors the gray mean and truncates


def test_shift_hue_matches_torchvision_adjust_hue():
    x = _images(4).float() / 255
    x[0] = x[0, :1]  # a gray image
    shifts = torch.tensor([0.25, -0.5, 0.05, 0.45])
    ref = torch.stack([T.functional.adjust_hue(x[i], float(shifts[i])) for i in range(4)])
    assert torch.allclose(shift_hue(x, shifts), ref, atol=1e-5)


def test_lighting_and_random_solarize_on_device():
    images = _images()
    torch.manual_seed(0)
    noise = Lighting(alphastd=0.0)
    pipeline = [T.ToImage(), ToDtype("float32", scale=True), noise, T.RandomSolarize(0.5, p=1.0)]
    assert torch.allclose(_device_batch(pipeline, images), _cpu_batch(pipeline, images), atol=1e-6)
    pipeline = [T.RandomSolarize(128, p=1.0), T.ToDtype(torch.float32, scale=True)]  # uint8 threshold
    assert torch.allclose(_device_batch(pipeline, images), _cpu_batch(pipeline, images), atol=1e-6)


def test_one_channel_images():
    images = _images(4)[:, :1]
    pipeline = [T.ColorJitter(0.4, 0.4, 0.4, 0.1), T.RandomGrayscale(p=1.0), T.ToDtype(torch.float32, scale=True),
                T.Normalize([0.5], [0.5])]
    out = _device_batch(pipeline, images)
    assert out.shape == (4, 1, 12, 12)
    fixed = [T.RandomGrayscale(p=1.0), T.ToDtype(torch.float32, scale=True), T.Normalize([0.5], [0.5])]
    assert torch.allclose(_device_batch(fixed, images), _cpu_batch(fixed, images), atol=1e-6)


# -- random settings: same distribution ---------------------------------------------------------------------------
def _rate(outputs: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of samples that differ from the untouched reference image."""
    return float((outputs - reference).flatten(1).abs().amax(1).gt(1e-4).float().mean())


@pytest.mark.parametrize(("transform", "p"), [
    (T.RandomGrayscale(p=0.3), 0.3), (Solarization(threshold=0, p=0.4), 0.4), (T.RandomHorizontalFlip(p=0.5), 0.5),
    (GaussianBlur(0.5, 1.5, p=0.6), 0.6), (RandomAppliedTrans([T.ColorJitter(brightness=(0.5, 0.5))], p=0.8), 0.8),
    (T.RandomApply([T.ColorJitter(hue=(0.2, 0.2))], p=0.2), 0.2),
])
def test_application_rates_match(transform, p):
    n = 300
    img = _images(1)[0]
    batch = img.expand(n, -1, -1, -1)
    pipeline = [ToDtype("float32", scale=True), transform]
    reference = img.float()[None] / 255
    torch.manual_seed(0)
    cpu_rate = _rate(_cpu_batch(pipeline, batch), reference)
    torch.manual_seed(0)
    dev_rate = _rate(_device_batch(pipeline, batch), reference)
    assert abs(cpu_rate - p) < 0.09 and abs(dev_rate - p) < 0.09


def test_random_simclr_pipeline_has_the_same_output_distribution():
    n = 300
    img = torch.nn.functional.interpolate(_images(1, size=4).float(), size=12, mode="bilinear")[0].round().to(torch.uint8)
    batch = img.expand(n, -1, -1, -1)
    pipeline = [RandomAppliedTrans([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(p=0.2),
                GaussianBlur(0.1, 2.0, p=0.5), Solarization(p=0.2), T.ToDtype(torch.float32, scale=True),
                T.Normalize(MEAN, STD)]
    torch.manual_seed(1)
    cpu_out = _cpu_batch(pipeline, batch)
    torch.manual_seed(1)
    dev_out = _device_batch(pipeline, batch)
    for stat in (lambda x: x.mean(dim=(2, 3)), lambda x: x.std(dim=(2, 3))):  # per-image, per-channel
        cpu_s, dev_s = stat(cpu_out), stat(dev_out)
        # same mean and spread over samples, per channel
        assert torch.allclose(cpu_s.mean(0), dev_s.mean(0), atol=0.08), (cpu_s.mean(0), dev_s.mean(0))
        assert torch.allclose(cpu_s.std(0), dev_s.std(0), rtol=0.2, atol=0.03), (cpu_s.std(0), dev_s.std(0))
    gray = lambda x: ((x * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)) * 255)  # noqa: E731
    cpu_gray = (gray(cpu_out).amax(1) - gray(cpu_out).amin(1)).amax((1, 2)).lt(1.5).float().mean()
    dev_gray = (gray(dev_out).amax(1) - gray(dev_out).amin(1)).amax((1, 2)).lt(1.5).float().mean()
    assert abs(cpu_gray - 0.2) < 0.07 and abs(dev_gray - 0.2) < 0.07


def test_per_sample_random_jitter_order():
    """With fixed factors, the result depends on the order only; all orders appear."""
    img = _images(1)[0]
    batch = img.expand(240, -1, -1, -1)
    pipeline = [ToDtype("float32", scale=True), T.ColorJitter((1.5, 1.5), (0.5, 0.5), (1.5, 1.5), (0.2, 0.2))]
    torch.manual_seed(0)
    out = _device_batch(pipeline, batch)
    distinct = torch.unique(out.flatten(1).mul(1e4).round(), dim=0)
    assert 12 <= distinct.shape[0] <= 24


def test_seeding_reproduces_device_outputs():
    pipeline = [RandomAppliedTrans([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), GaussianBlur(p=0.5)]
    images = _images()
    torch.manual_seed(5)
    a = _device_batch(pipeline, images)
    torch.manual_seed(5)
    assert torch.equal(a, _device_batch(pipeline, images))


# -- the batch dict ---------------------------------------------------------------------------------------------------
def test_batch_device_transform_views_and_keys():
    _, normalise = split_pipeline([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(MEAN, STD)])
    _, flip = split_pipeline([T.RandomGrayscale(p=0.0), T.RandomHorizontalFlip(p=1.0),
                              T.ToDtype(torch.float32, scale=True)])
    views = [_images(2, 4), _images(2, 4, seed=1), _images(2, 2, seed=2)]
    batch = {"img": views, "label": torch.tensor([3, 4]), "mask": torch.ones(2, 2)}
    out = BatchDeviceTransform([normalise, flip, None])(batch)
    assert out["label"] is batch["label"] and out["mask"] is batch["mask"]
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(out["img"][0], (views[0].float() / 255 - m) / s, atol=1e-6)
    assert torch.allclose(out["img"][1], views[1].float().flip(-1) / 255)
    assert torch.allclose(out["img"][2], views[2].float() / 255)
    single = BatchDeviceTransform([normalise])({"img": views[0]})
    assert torch.allclose(single["img"], out["img"][0])
    with pytest.raises(ValueError, match="3 views but 2"):
        BatchDeviceTransform([normalise, flip])(batch)


def test_multiview_dataset_device_path(tmp_path):
    views = pytest.importorskip("selfsup_data.datasets.views", reason="datasets not there yet")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", images=rng.integers(0, 256, (10, 20, 20, 3), dtype=np.uint8),
             labels=np.arange(10))
    pipeline = [{"type": "RandomResizedCrop", "size": 16}, {"type": "RandomHorizontalFlip"},
                {"type": "RandomAppliedTrans", "p": 0.8,
                 "transforms": [{"type": "ColorJitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                                 "hue": 0.1}]},
                {"type": "RandomGrayscale", "p": 0.2}, {"type": "GaussianBlur", "p": 0.5},
                {"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True},
                {"type": "Normalize", "mean": MEAN, "std": STD}]
    dataset = build({"type": "MultiViewDataset", "augment_on": "device", "num_views": [2, 1],
                     "data_source": {"type": "NumpyArrays", "file": str(tmp_path / "data.npz")},
                     "pipelines": [pipeline, [{"type": "RandomResizedCrop", "size": 8}, *pipeline[1:]]]}, "datasets")
    assert isinstance(dataset, views.MultiViewDataset)
    batch = next(iter(DataLoader(dataset, batch_size=4, num_workers=0)))
    assert [v.dtype for v in batch["img"]] == [torch.uint8] * 3
    moved = device_transform_of(dataset, torch.device("cpu"))  # what the trainer does: a copy, .to(device)
    assert moved is not dataset.device_transform
    with torch.no_grad():
        batch = moved(batch)
    assert [tuple(v.shape) for v in batch["img"]] == [(4, 3, 16, 16), (4, 3, 16, 16), (4, 3, 8, 8)]
    assert all(v.dtype == torch.float32 for v in batch["img"])
    assert batch["img"][0].min() < 0 < batch["img"][0].max()  # normalised, not 0..1
    assert torch.equal(batch["label"], torch.tensor([0, 1, 2, 3]))
