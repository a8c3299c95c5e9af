"""Memories: momentum updates by hand, ODC relabelling, centroids and small-cluster handling."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from selfsup_core.build import build
from selfsup_core.errors import ConfigError

from selfsup_models.memories import ODCMemory, SimpleMemory
from selfsup_models.memories.odc import two_means

R = 1 / math.sqrt(2)


# -- SimpleMemory -----------------------------------------------------------------------------
def test_simple_memory_starts_unit_norm_identical_and_in_state_dict():
    memory = build({"type": "SimpleMemory", "length": 10, "feat_dim": 4, "momentum": 0.5}, "memories")
    assert memory.feature_bank.shape == (10, 4)
    torch.testing.assert_close(memory.feature_bank.norm(dim=1), torch.ones(10))
    # every process draws the same bank without communicating
    torch.testing.assert_close(SimpleMemory(10, 4, 0.5).feature_bank, memory.feature_bank)
    assert set(memory.state_dict()) == {"feature_bank"}


def test_simple_memory_momentum_update_by_hand():
    memory = SimpleMemory(length=4, feat_dim=2, momentum=0.5)
    memory.feature_bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    # features normalise to [0, 1] and [0.6, 0.8]
    # row 0: 0.5 [1, 0] + 0.5 [0, 1] = [0.5, 0.5]   -> [1/sqrt2, 1/sqrt2]
    # row 1: 0.5 [0, 1] + 0.5 [0.6, 0.8] = [0.3, 0.9] -> [0.3, 0.9] / sqrt(0.9)
    memory.update(torch.tensor([0, 1]), torch.tensor([[0.0, 2.0], [3.0, 4.0]]))
    s = math.sqrt(0.9)
    expected = torch.tensor([[R, R], [0.3 / s, 0.9 / s], [1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(memory.feature_bank, expected)


def test_simple_memory_repeated_index_takes_last_feature():
    memory = SimpleMemory(length=2, feat_dim=2, momentum=1.0)
    memory.update(torch.tensor([1, 0, 1]), torch.tensor([[5.0, 0.0], [0.0, 1.0], [0.0, -3.0]]))
    torch.testing.assert_close(memory.feature_bank, torch.tensor([[0.0, 1.0], [0.0, -1.0]]))


def test_simple_memory_draw_and_bad_values():
    memory = SimpleMemory(length=5, feat_dim=2, momentum=0.5)
    draws = memory.draw(1000, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (1000,) and draws.min() == 0 and draws.max() == 4
    with pytest.raises(ConfigError, match="momentum"):
        build({"type": "SimpleMemory", "length": 5, "feat_dim": 2, "momentum": 1.5}, "memories")
    with pytest.raises(ConfigError, match="did you mean 'feat_dim'"):
        build({"type": "SimpleMemory", "length": 5, "feat_dims": 2, "momentum": 0.5}, "memories")


# -- ODCMemory --------------------------------------------------------------------------------
FEATURES = np.array(
    [[1.0, 0.0], [1.0, 0.0], [0.8, 0.6],  # cluster 0
     [0.0, 1.0], [0.0, 1.0], [0.6, 0.8],  # cluster 1
     [-1.0, 0.0]],                         # cluster 2 (one sample: small for min_cluster=2)
    dtype=np.float32,
)
LABELS = np.array([0, 0, 0, 1, 1, 1, 2])


def odc_memory(split: str = "kmeans") -> ODCMemory:
    memory = build({"type": "ODCMemory", "length": 7, "feat_dim": 2, "momentum": 0.5, "num_classes": 3,
                    "min_cluster": 2, "split": split}, "memories")
    memory.init_memory(FEATURES * 2, LABELS)  # features are normalised on the way in
    return memory


def test_odc_init_memory_computes_centroids():
    memory = odc_memory()
    assert bool(memory.initialized)
    torch.testing.assert_close(memory.feature_bank, torch.from_numpy(FEATURES))
    torch.testing.assert_close(
        memory.centroids, torch.tensor([[2.8 / 3, 0.2], [0.2, 2.8 / 3], [-1.0, 0.0]])
    )
    assert set(memory.state_dict()) == {"feature_bank", "label_bank", "centroids", "loss_weight", "initialized"}


def test_odc_init_memory_rejects_empty_cluster_and_bad_shapes():
    memory = ODCMemory(length=3, feat_dim=2, momentum=0.5, num_classes=3)
    with pytest.raises(ValueError, match=r"clusters \[2\] are empty"):
        memory.init_memory(np.ones((3, 2), dtype=np.float32), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="expected features"):
        memory.init_memory(np.ones((2, 2), dtype=np.float32), np.array([0, 1]))
    with pytest.raises(RuntimeError, match="before init_memory"):
        memory.update_samples_memory(torch.tensor([0]), torch.ones(1, 2))


def test_odc_update_samples_memory_by_hand():
    memory = odc_memory()
    # sample 2: 0.5 [0.8, 0.6] + 0.5 [0, 1] = [0.4, 0.8] -> [1, 2]/sqrt5; nearest centroid: 1 (changed)
    # sample 6: 0.5 [-1, 0] + 0.5 [0, -1] -> [-r, -r]; nearest centroid: 2 (unchanged)
    ratio = memory.update_samples_memory(torch.tensor([2, 6]), torch.tensor([[0.0, 3.0], [0.0, -2.0]]))
    assert ratio.item() == pytest.approx(0.5)
    s5 = math.sqrt(5)
    torch.testing.assert_close(memory.feature_bank[2], torch.tensor([1 / s5, 2 / s5]))
    torch.testing.assert_close(memory.feature_bank[6], torch.tensor([-R, -R]))
    assert memory.label_bank.tolist() == [0, 0, 1, 1, 1, 1, 2]


@pytest.mark.parametrize("split", ["two_means", "kmeans"])
def test_odc_centroids_and_small_cluster_reassignment_by_hand(split):
    if split == "kmeans":
        pytest.importorskip("sklearn")
    memory = odc_memory(split)
    memory.update_samples_memory(torch.tensor([2, 6]), torch.tensor([[0.0, 3.0], [0.0, -2.0]]))
    memory.update_centroids_memory()
    s5 = math.sqrt(5)
    c1 = torch.tensor([(1 / s5 + 0.6) / 4, (2 / s5 + 2.8) / 4])
    torch.testing.assert_close(memory.centroids, torch.stack([torch.tensor([1.0, 0.0]), c1, torch.tensor([-R, -R])]))
    memory.deal_with_small_clusters()
    # cluster 2 has 1 < min_cluster=2 samples: sample 6 ([-r, -r]) moves to the nearer of
    # centroids 0 ([1, 0]: -0.707) and 1 (-0.838) -> 0. Cluster 2 is then refilled from the
    # largest cluster 1 = samples {2, 3, 4, 5}: 2-means starts from sample 5 (farthest from the
    # mean) and sample 3 (farthest from sample 5) and splits {2, 5} | {3, 4}; {3, 4} -> cluster 2.
    # scikit-learn's KMeans (0.x's split) finds the same halves but labels {2, 5} as 1, and 0.x
    # gives the emptied cluster's label to the half labelled 1.
    labels = [0, 0, 1, 2, 2, 1, 0] if split == "two_means" else [0, 0, 2, 1, 1, 2, 0]
    assert memory.label_bank.tolist() == labels
    pair = torch.tensor([(1 / s5 + 0.6) / 2, (2 / s5 + 0.8) / 2])
    moved, stayed = (2, 1) if split == "two_means" else (1, 2)
    torch.testing.assert_close(memory.centroids[stayed], pair)
    torch.testing.assert_close(memory.centroids[moved], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(memory.centroids[0], torch.tensor([1.0, 0.0]))  # only the split pair is updated
    memory.deal_with_small_clusters()  # nothing small any more: no change
    assert memory.label_bank.tolist() == labels


def test_odc_update_centroids_subset_keeps_empty_clusters():
    memory = odc_memory()
    before = memory.centroids.clone()
    memory.label_bank[6] = 0  # cluster 2 now empty
    memory.update_centroids_memory([0, 2])
    torch.testing.assert_close(memory.centroids[0], torch.from_numpy(FEATURES[[0, 1, 2, 6]]).mean(dim=0))
    torch.testing.assert_close(memory.centroids[1:], before[1:])  # 1 not listed, 2 empty


def test_odc_set_reweight_by_hand():
    memory = odc_memory()
    # label counts [3, 3, 1]: w ~ [3^-0.5, 3^-0.5, 1], normalised
    weights = memory.set_reweight()
    raw = [1 / math.sqrt(3 + 1e-5), 1 / math.sqrt(3 + 1e-5), 1 / math.sqrt(1 + 1e-5)]
    expected = torch.tensor([w / sum(raw) for w in raw])
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(memory.loss_weight, expected)
    torch.testing.assert_close(memory.set_reweight(np.array([0, 1, 1, 2]), reweight_pow=1.0),
                               torch.tensor([0.4, 0.2, 0.4]), atol=1e-5, rtol=0)


def test_odc_state_round_trip():
    memory = odc_memory()
    memory.update_samples_memory(torch.tensor([2, 6]), torch.tensor([[0.0, 3.0], [0.0, -2.0]]))
    fresh = ODCMemory(length=7, feat_dim=2, momentum=0.5, num_classes=3, min_cluster=2)
    fresh.load_state_dict(memory.state_dict())
    assert bool(fresh.initialized)
    assert torch.equal(fresh.label_bank, memory.label_bank) and torch.equal(fresh.feature_bank, memory.feature_bank)


def test_two_means_identical_points_leaves_a_side_empty():
    mask = two_means(torch.ones(4, 3))
    assert mask.sum() in (0, 4)  # the caller then splits by index halves
    split = two_means(torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]]))
    assert split.tolist() in ([False, False, True, True], [True, True, False, False])
