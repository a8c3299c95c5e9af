"""Datasets: output shapes, labels and contents; bad samples; workers; building through the core."""
from __future__ import annotations

import pickle
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2

from selfsup_core import registry, session
from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from selfsup_data.datasets import (
    ConcatDataset, DeepClusterDataset, MultiViewDataset, OneViewDataset, RelativeLocDataset, RepeatDataset,
    RotationPredDataset,
)
from selfsup_data.datasets.pretext import NEIGHBOURS
from selfsup_data.sources import BadSampleError, ImageFolder, NumpyArrays

TO_UINT8 = v2.PILToTensor()


@pytest.fixture
def arrays(tmp_path):
    """NumpyArrays source: 5 RGB 8x8 images, labels [0, 1, 2, 0, 1]; returns (source, images)."""
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 2, 0, 1]))
    return NumpyArrays(str(tmp_path / "d.npz")), images


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


# -- OneView / MultiView ------------------------------------------------------------------------------------
def test_one_view(arrays):
    src, images = arrays
    ds = OneViewDataset(src, [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    assert len(ds) == 5
    sample = ds[3]
    assert set(sample) == {"img", "label", "idx"}
    assert sample["img"].shape == (3, 8, 8) and sample["label"] == 0 and sample["idx"] == 3
    torch.testing.assert_close(sample["img"], chw(images[3]).float() / 255)
    batch = default_collate([ds[i] for i in range(4)])
    assert batch["img"].shape == (4, 3, 8, 8)
    assert batch["label"].tolist() == [0, 1, 2, 0] and batch["idx"].tolist() == [0, 1, 2, 3]
    assert ds.device_transform is None and ds.CLASSES is None


def test_pipeline_must_end_with_tensor(arrays):
    ds = OneViewDataset(arrays[0], [v2.RandomHorizontalFlip(p=0.0)])
    with pytest.raises(ValueError, match="OneViewDataset: pipeline must end producing a tensor, got PIL.Image.Image"):
        ds[0]
    with pytest.raises(ValueError, match=r"OneViewDataset: pipeline\[1\] is not a transform"):
        OneViewDataset(arrays[0], [TO_UINT8, 3])


def test_extra_outputs_of_transforms(arrays):
    def with_mask(img):
        return {"img": img, "mask": torch.ones(2, 2, dtype=torch.bool)}

    sample = OneViewDataset(arrays[0], [TO_UINT8, with_mask])[0]
    assert sample["mask"].shape == (2, 2)
    sample = MultiViewDataset(arrays[0], [2], [[TO_UINT8, with_mask]])[0]
    assert len(sample["mask"]) == 2


def test_multi_view_groups(arrays):
    src, images = arrays
    ds = MultiViewDataset(src, num_views=[2, 1], pipelines=[[v2.RandomCrop(4), TO_UINT8], [TO_UINT8, v2.Resize(6)]])
    sample = ds[1]
    assert [tuple(v.shape) for v in sample["img"]] == [(3, 4, 4), (3, 4, 4), (3, 6, 6)]
    assert sample["label"] == 1 and sample["idx"] == 1
    full = chw(images[1])
    for view in sample["img"][:2]:  # each crop is a 4x4 window of the image
        assert any(torch.equal(view, full[:, y:y + 4, x:x + 4]) for y in range(5) for x in range(5))
    batch = default_collate([ds[0], ds[1]])
    assert [tuple(v.shape) for v in batch["img"]] == [(2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 6, 6)]
    with pytest.raises(ValueError, match=r"len\(num_views\) must equal len\(pipelines\).*has 2 groups, pipelines has 1"):
        MultiViewDataset(src, num_views=[2, 6], pipelines=[[TO_UINT8]])
    with pytest.raises(ValueError, match="num_views must hold positive integers"):
        MultiViewDataset(src, num_views=[0], pipelines=[[TO_UINT8]])


# -- RelativeLoc / RotationPred ------------------------------------------------------------------------------
def grid_image() -> np.ndarray:
    """31x32 RGB image whose 3x3 cells (10x10, plus a leftover row/column) are constant:
    cell (r, c) has value 20 * (3 r + c) + 5 in red, +1 in green, +2 in blue."""
    img = np.zeros((31, 32, 3), np.uint8)
    for r in range(3):
        for c in range(3):
            base = 20 * (3 * r + c) + 5
            img[r * 10:(r + 1) * 10, c * 10:(c + 1) * 10] = [base, base + 1, base + 2]
    img[30:, :] = 255
    img[:, 30:] = 255
    return img


def test_relative_loc_patches_come_from_grid_cells(tmp_path):
    np.savez(tmp_path / "g.npz", images=grid_image()[None], labels=np.array([7]))
    src = NumpyArrays(str(tmp_path / "g.npz"))
    ds = RelativeLocDataset(src, pipeline=[], format_pipeline=[TO_UINT8], patch_jitter=3)
    tensor_ds = RelativeLocDataset(src, pipeline=[TO_UINT8], patch_jitter=3)  # patches cut from a tensor
    assert NEIGHBOURS == ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
    for dataset in (ds, tensor_ds):
        for _ in range(5):  # random jitter: every draw must stay inside its cell
            sample = dataset[0]
            assert sample["img"].shape == (8, 6, 7, 7) and sample["img"].dtype == torch.uint8
            assert sample["patch_label"].tolist() == list(range(8)) and sample["label"] == 7
            for k, (r, c) in enumerate(NEIGHBOURS):
                base = 20 * (3 * r + c) + 5
                centre = 20 * 4 + 5
                expected = torch.tensor([base, base + 1, base + 2, centre, centre + 1, centre + 2], dtype=torch.uint8)
                assert torch.equal(sample["img"][k], expected[:, None, None].expand(6, 7, 7)), (k, r, c)
    batch = default_collate([ds[0], ds[0]])
    assert batch["img"].shape == (2, 8, 6, 7, 7) and batch["patch_label"].shape == (2, 8)
    with pytest.raises(ValueError, match="too small for patch_jitter = 21"):
        RelativeLocDataset(src, pipeline=[], format_pipeline=[TO_UINT8])[0]
    with pytest.raises(ValueError, match='augment_on = "device" is not supported'):
        RelativeLocDataset(src, pipeline=[], augment_on="device")


def test_rotation_pred_rotations_exact(arrays):
    src, images = arrays
    ds = RotationPredDataset(src, [TO_UINT8])
    sample = ds[2]
    assert sample["img"].shape == (4, 3, 8, 8) and sample["rot_label"].tolist() == [0, 1, 2, 3]
    assert sample["label"] == 2 and sample["idx"] == 2
    for k in range(4):  # k * 90 degrees counter-clockwise
        assert torch.equal(sample["img"][k], chw(np.rot90(images[2], k, axes=(0, 1))))
    with pytest.raises(ValueError, match="must produce square images"):
        RotationPredDataset(src, [v2.CenterCrop((4, 6)), TO_UINT8])[0]


# -- DeepCluster ------------------------------------------------------------------------------------------------
def test_deep_cluster_reassignment(arrays):
    ds = DeepClusterDataset(arrays[0], [TO_UINT8])
    assert [ds[i]["pseudo_label"] for i in range(5)] == [-1] * 5
    ds.assign_labels(np.array([4, 3, 2, 1, 0]))
    assert [ds[i]["pseudo_label"] for i in range(5)] == [4, 3, 2, 1, 0]
    ds.assign_labels(torch.tensor([1, 1, 0, 0, 1]))
    assert ds[0]["pseudo_label"] == 1 and ds[0]["label"] == 0
    assert ds.clustering_labels.tolist() == [1, 1, 0, 0, 1]
    with pytest.raises(ValueError, match=r"expected 5 labels \(one per sample\), got shape \(4,\)"):
        ds.assign_labels(np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="labels must be integers"):
        ds.assign_labels(np.zeros(5, np.float32))


@pytest.mark.parametrize("persistent", [False, True])
def test_deep_cluster_labels_reach_workers(arrays, persistent):
    ds = DeepClusterDataset(arrays[0], [TO_UINT8])
    loader = DataLoader(ds, batch_size=5, num_workers=1, persistent_workers=persistent)
    assert next(iter(loader))["pseudo_label"].tolist() == [-1] * 5
    ds.assign_labels(np.array([2, 2, 1, 1, 0]))
    assert next(iter(loader))["pseudo_label"].tolist() == [2, 2, 1, 1, 0]


# -- wrappers -----------------------------------------------------------------------------------------------------
def test_concat_and_repeat(arrays):
    src, images = arrays
    a = OneViewDataset(src, [TO_UINT8])
    b = RotationPredDataset(src, [TO_UINT8])
    cat = ConcatDataset([a, b, a])
    assert len(cat) == 15
    assert cat[4]["idx"] == 4 and cat[4]["img"].shape == (3, 8, 8)
    assert cat[5]["idx"] == 5 and cat[5]["img"].shape == (4, 3, 8, 8)
    assert torch.equal(cat[5]["img"][0], chw(images[0]))
    assert cat[14]["idx"] == 14 and torch.equal(cat[14]["img"], chw(images[4]))
    assert cat[-1]["idx"] == 14
    with pytest.raises(IndexError):
        cat[15]
    rep = RepeatDataset(a, times=3)
    assert len(rep) == 15
    assert rep[7]["idx"] == 2 and torch.equal(rep[7]["img"], chw(images[2]))
    with pytest.raises(IndexError):
        rep[15]
    with pytest.raises(ValueError, match="times must be an integer >= 1"):
        RepeatDataset(a, times=0)
    with pytest.raises(ValueError, match="non-empty list"):
        ConcatDataset([])


# -- bad samples ------------------------------------------------------------------------------------------------------
@pytest.fixture
def folder_with_corrupt_file(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for name in ("a.png", "c.png", "d.png"):
        Image.fromarray(np.full((4, 4, 3), ord(name[0]), np.uint8)).save(root / name)
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return ImageFolder(str(root)), str(root / "b.png")


def test_bad_sample_error_names_file(folder_with_corrupt_file):
    src, bad = folder_with_corrupt_file
    ds = OneViewDataset(src, [TO_UINT8])
    assert ds[0]["img"][0, 0, 0] == ord("a")
    with pytest.raises(BadSampleError) as info:
        ds[1]
    assert bad in str(info.value) and 'on_bad_sample = "skip"' in str(info.value)


def test_bad_sample_skip_counts_and_warns_once(folder_with_corrupt_file):
    src, bad = folder_with_corrupt_file
    ds = OneViewDataset(src, [TO_UINT8], on_bad_sample="skip")
    with pytest.warns(RuntimeWarning, match="skipped an unreadable sample: cannot read image .*b.png"):
        sample = ds[1]
    assert sample["idx"] == 2 and sample["img"][0, 0, 0] == ord("c")  # the next good one
    assert ds.num_skipped == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        ds[1]
    assert ds.num_skipped == 2
    assert RepeatDataset(ds, 2).num_skipped == 2 and ConcatDataset([ds, ds]).num_skipped == 4


def test_bad_sample_skips_counted_across_workers(folder_with_corrupt_file):
    src, _ = folder_with_corrupt_file
    ds = OneViewDataset(src, [TO_UINT8], on_bad_sample="skip")
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idx = [int(b["idx"]) for b in loader]
    assert idx == [0, 2, 2, 3]
    assert ds.num_skipped == 1


def test_all_bad_gives_up(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for name in ("a.png", "b.png"):
        (root / name).write_bytes(b"junk")
    ds = OneViewDataset(ImageFolder(str(root)), [TO_UINT8], on_bad_sample="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BadSampleError, match="a.png.*skipping gave up"):
            ds[0]
    with pytest.raises(ValueError, match="on_bad_sample must be 'error' or 'skip'"):
        OneViewDataset(ImageFolder(str(root)), [TO_UINT8], on_bad_sample="ignore")


def test_datasets_pickle(arrays):
    ds = DeepClusterDataset(arrays[0], [TO_UINT8])
    ds.assign_labels(np.arange(5))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[3]["pseudo_label"] == 3 and torch.equal(copy[3]["img"], ds[3]["img"])


# -- device augmentation wiring (the device modules themselves are tested with device_augment) ------------------------
def test_augment_on_device_splits_each_group(arrays, monkeypatch):
    calls = []

    def split_pipeline(transforms):
        calls.append(list(transforms))
        return transforms[:1], f"device-part-{len(calls)}"

    class BatchDeviceTransform:
        def __init__(self, per_view):
            self.per_view = per_view

    fake = types.ModuleType("selfsup_data.device_augment")
    fake.split_pipeline, fake.BatchDeviceTransform = split_pipeline, BatchDeviceTransform
    monkeypatch.setitem(sys.modules, "selfsup_data.device_augment", fake)
    flip = v2.RandomHorizontalFlip()
    ds = MultiViewDataset(arrays[0], [2, 1], [[TO_UINT8, flip], [TO_UINT8]], augment_on="device")
    assert calls == [[TO_UINT8, flip], [TO_UINT8]]
    assert ds.device_transform.per_view == ["device-part-1", "device-part-1", "device-part-2"]
    assert ds.pipelines[0].transforms == [TO_UINT8]
    one = OneViewDataset(arrays[0], [TO_UINT8], augment_on="device")
    assert one.device_transform.per_view == ["device-part-3"]
    assert ConcatDataset([one, one]).device_transform is one.device_transform
    with pytest.raises(ValueError, match="some datasets augment on the device and some on the CPU"):
        ConcatDataset([one, OneViewDataset(arrays[0], [TO_UINT8])])
    with pytest.raises(ValueError, match="augment_on must be 'cpu' or 'device'"):
        OneViewDataset(arrays[0], [TO_UINT8], augment_on="gpu")


# -- building through the core ---------------------------------------------------------------------------------------------
def test_build_multi_view_through_core(write_idx):
    root = write_idx(sub="fm", size=8)["root"]
    table = {
        "type": "MultiViewDataset",
        "data_source": {"type": "FashionMNIST", "root": root, "split": "test", "color_type": "color"},
        "num_views": [2],
        "pipelines": [[{"type": "TestCrop", "size": 6}, {"type": "TestToTensor"}]],
    }
    transforms = session.get("transforms")
    with transforms.temporary("TestCrop", v2.RandomCrop), transforms.temporary("TestToTensor", v2.PILToTensor):
        ds = build(table, "datasets")
        assert isinstance(ds, MultiViewDataset) and len(ds) == 3
        sample = ds[0]
        assert [tuple(v.shape) for v in sample["img"]] == [(3, 6, 6), (3, 6, 6)]
        assert sample["label"] == 0
        single = build({"type": "SingleViewDataset", "data_source": table["data_source"],
                        "pipeline": [{"type": "TestToTensor"}]}, "datasets")
        assert type(single) is OneViewDataset
        with pytest.raises(ConfigError, match="num_view: unknown argument of MultiViewDataset.*did you mean 'num_views'"):
            build({**table, "num_view": [2]}, "datasets")
        with pytest.raises(ConfigError, match=r"len\(num_views\) must equal len\(pipelines\)"):
            build({**table, "num_views": [2, 6]}, "datasets")
        with pytest.raises(ConfigError, match="data_source.split.*FashionMNIST.*expects str"):
            build({**table, "data_source": {**table["data_source"], "split": 1}}, "datasets")
        cat = build({"type": "ConcatDataset", "datasets": [table, table]}, "datasets")
        assert len(cat) == 6
        rep = build({"type": "RepeatDataset", "dataset": table, "times": 2}, "datasets")
        assert len(rep) == 6


@pytest.mark.filterwarnings("ignore:The transform `ToTensor\\(\\)` is deprecated")
def test_build_with_registered_transforms(write_idx):
    names = set(session.get("transforms").names())
    if not {"RandomResizedCrop", "ToTensor"} <= names:
        pytest.skip("selfsup-data transforms are not registered yet (RandomResizedCrop, ToTensor)")
    root = write_idx(sub="fm", size=8)["root"]
    ds = build({
        "type": "MultiViewDataset",
        "data_source": {"type": "FashionMNIST", "root": root, "color_type": "color"},
        "num_views": [2, 1],
        "pipelines": [[{"type": "RandomResizedCrop", "size": 6}, {"type": "ToTensor"}],
                      [{"type": "RandomResizedCrop", "size": 4}, {"type": "ToTensor"}]],
    }, "datasets")
    assert [tuple(v.shape) for v in ds[0]["img"]] == [(3, 6, 6), (3, 6, 6), (3, 4, 4)]
