"""The ``Subset`` data source and the ``selfsup_data.testing`` / ``selfsup_core.testing`` helpers
that plugin tests use to train a shipped config on a small real image set."""
from __future__ import annotations

import numpy as np
import pytest

from selfsup_core.build import build
from selfsup_core.config import load_config
from selfsup_core.testing import derive_config
from selfsup_data.sources import NumpyArrays, Subset
from selfsup_data.testing import fashion_mnist_npz


@pytest.fixture
def source(tmp_path):
    images = np.arange(12, dtype=np.uint8).reshape(12, 1, 1).repeat(4, 1).repeat(4, 2)
    labels = np.array([0, 1, 2] * 4)
    np.savez(tmp_path / "a.npz", images=images, labels=labels)
    return NumpyArrays(str(tmp_path / "a.npz"))


def pixel(src, i):
    return int(np.asarray(src.get_img(i))[0, 0])


def test_first_samples_without_seed(source):
    sub = Subset(source, 5, seed=None)
    assert len(sub) == 5
    assert [pixel(sub, i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert sub.get_gt_labels().tolist() == [0, 1, 2, 0, 1]
    assert sub.describe(4) == source.describe(4)


def test_seeded_subset_is_stable_sorted_and_distinct(source):
    a, b = Subset(source, 6, seed=3), Subset(source, 6, seed=3)
    assert a.indices.tolist() == b.indices.tolist()
    assert a.indices.tolist() == sorted(set(a.indices.tolist()))
    assert [pixel(a, i) for i in range(6)] == a.indices.tolist()
    assert a.get_gt_labels().tolist() == [int(i) % 3 for i in a.indices]


def test_per_class_draws_equal_counts(source):
    sub = Subset(source, 6, seed=0, per_class=True)
    assert np.bincount(sub.get_gt_labels()).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="multiple of the 3 classes"):
        Subset(source, 5, per_class=True)
    with pytest.raises(ValueError, match="class 0 has 4 samples, fewer than the 5 per class"):
        Subset._per_class(np.array([0] * 4 + [1] * 20 + [2] * 20), 15, None)


@pytest.mark.parametrize("bad", [0, 13, 2.5, True])
def test_bad_num_samples(source, bad):
    with pytest.raises(ValueError, match=r"num_samples must be an integer from 1 to 12"):
        Subset(source, bad)


def test_built_from_a_nested_table(tmp_path, source):
    sub = build({"type": "Subset", "num_samples": 4, "seed": None,
                 "source": {"type": "NumpyArrays", "file": str(tmp_path / "a.npz")}}, "data_sources")
    assert isinstance(sub.source, NumpyArrays) and len(sub) == 4


def test_fashion_mnist_npz_and_derived_config(tmp_path):
    path, real = fashion_mnist_npz(tmp_path / "fm.npz", 40)
    with np.load(path) as data:
        assert data["images"].shape == (40, 28, 28) and data["images"].dtype == np.uint8
        assert data["labels"].shape == (40,) and len(data["classes"]) == 10
    base = tmp_path / "base.toml"
    base.write_text('[data.train]\ntype = "OneViewDataset"\npipeline = []\n'
                    '[data.train.data_source]\ntype = "FashionMNIST"\nsplit = "train"\n[runner]\nmax_epochs = 100\n')
    derived = derive_config(base, tmp_path / "d" / "derived.toml",
                            replace={"data.train.data_source": {"type": "NumpyArrays", "file": str(path)}},
                            values={"runner.max_epochs": 1})
    config = load_config(derived)
    assert config.data["data"]["train"]["data_source"] == {"type": "NumpyArrays", "file": str(path)}
    assert config.data["data"]["train"]["type"] == "OneViewDataset"
    assert config.data["runner"]["max_epochs"] == 1
