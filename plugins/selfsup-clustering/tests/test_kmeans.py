"""k-means, PCA-whitening, uniform sampling over clusters and the Sobel layer."""
from __future__ import annotations

import pytest
import torch

from selfsup_clustering.deepcluster_hook import UniformClusterSampler, uniform_indices
from selfsup_clustering.kmeans import Kmeans, _split_largest, cluster_stats, kmeans, pca_whiten
from selfsup_clustering.sobel import Sobel
from selfsup_core.engine.data import SeededSampler


def blobs(per_blob: int = 30, dim: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[8.0] + [0.0] * (dim - 1), [0.0, 8.0] + [0.0] * (dim - 2), [-8.0] + [0.0] * (dim - 1)])
    truth = torch.arange(3).repeat_interleave(per_blob)
    x = centres[truth] + torch.randn(3 * per_blob, dim, generator=generator)
    return x, truth


def same_partition(labels: torch.Tensor, truth: torch.Tensor) -> bool:
    """Each true group has one label, and different groups have different labels."""
    mapping = {}
    for group in truth.unique().tolist():
        found = labels[truth == group].unique()
        if found.numel() != 1:
            return False
        mapping[group] = int(found)
    return len(set(mapping.values())) == len(mapping)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_finds_separable_blobs(seed: int) -> None:
    x, truth = blobs(seed=seed)
    labels, centroids = kmeans(x, 3, iterations=20, seed=seed)
    assert same_partition(labels, truth)
    for group in range(3):  # each centroid is its blob's mean
        assert torch.allclose(centroids[labels[truth == group][0]], x[truth == group].mean(dim=0), atol=1e-5)


def test_kmeans_class_with_pca_whitening_finds_the_blobs() -> None:
    x, truth = blobs()
    labels = Kmeans(k=3, pca_dim=2, backend="torch").cluster(x)
    assert labels.dtype == torch.int64 and same_partition(labels, truth)
    assert same_partition(Kmeans(k=3, pca_dim=-1, backend="torch").cluster(x), truth)


def test_kmeans_hand_example_with_two_points_per_cluster() -> None:
    # points 0, 1 | 10, 11 in 1-D: any start with one point on each side converges to means 0.5, 10.5
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    labels, centroids = kmeans(x, 2, seed=3)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert sorted(centroids.flatten().tolist()) == [0.5, 10.5]


def test_fewer_samples_than_clusters_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"5 samples cannot form k = 8 clusters; lower k to at most 5"):
        Kmeans(k=8, backend="torch").cluster(torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        Kmeans(k=2, backend="torch").cluster(torch.tensor([[0.0], [float("nan")], [1.0]]))


def test_kmeans_config_errors() -> None:
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        Kmeans(k=1)
    with pytest.raises(ValueError, match="pca_dim must be -1"):
        Kmeans(k=3, pca_dim=0)
    with pytest.raises(ValueError, match="backend must be one of"):
        Kmeans(k=3, backend="sklearn")


def test_empty_cluster_takes_half_of_the_largest() -> None:
    centroids = torch.tensor([[1.0, 2.0], [5.0, 5.0], [9.0, 9.0]])
    _split_largest(centroids, torch.tensor([6, 0, 2]))
    eps = 1 / 1024
    assert torch.allclose(centroids[1], torch.tensor([1.0, 2.0]) * (1 + eps))
    assert torch.allclose(centroids[0], torch.tensor([1.0, 2.0]) * (1 - eps))
    assert torch.equal(centroids[2], torch.tensor([9.0, 9.0]))


def test_pca_whitening_gives_unit_variance_components() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 4, generator=generator) * torch.tensor([5.0, 2.0, 1.0, 0.1]) + 3.0
    y = pca_whiten(x, 3)
    assert y.shape == (500, 3)
    cov = torch.cov(y.t().double())
    assert torch.allclose(cov, torch.eye(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(y.mean(dim=0), torch.zeros(3), atol=1e-4)


def test_cluster_stats() -> None:
    assert cluster_stats(torch.tensor([0, 0, 2, 2, 2]), 4) == {"empty_clusters": 2, "min_cluster": 0, "max_cluster": 3}


def test_uniform_indices_balance_clusters() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    order = uniform_indices(labels, 2, torch.Generator().manual_seed(0))
    assert order.shape == (100,)
    from_big, from_small = order[labels[order] == 0], order[labels[order] == 1]
    # 51 distinct samples of the big cluster and 51 drawn with replacement from the small one, cut to 100
    assert from_big.numel() + from_small.numel() == 100 and 49 <= from_big.numel() <= 51
    assert from_big.unique().numel() == from_big.numel()
    assert torch.equal(order, uniform_indices(labels, 2, torch.Generator().manual_seed(0)))


def test_uniform_sampler_shards_one_draw_across_ranks() -> None:
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 2)
    ranks = [UniformClusterSampler(SeededSampler(12, num_replicas=2, rank=r, seed=5), labels, 3) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(3)
    shares = [[i for i, _ in sampler] for sampler in ranks]
    assert len(shares[0]) == len(shares[1]) == 6
    generator = torch.Generator().manual_seed(5 * 1_000_003 + 3)
    whole = uniform_indices(labels, 3, generator).tolist()
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]


def test_sobel_gradients_of_a_step_edge() -> None:
    img = torch.zeros(1, 3, 5, 5)
    img[..., 3:] = 3.0  # a vertical edge; grey value 3 right of column 2
    out = Sobel()(img)
    assert out.shape == (1, 2, 5, 5)
    # at (2, 2): horizontal filter [[1, 0, -1], [2, 0, -2], [1, 0, -1]] -> (1 + 2 + 1) * (0 - 3) = -12
    assert out[0, 0, 2, 2] == -12.0 and out[0, 1, 2, 2] == 0.0
    assert torch.equal(Sobel()(img[:, :1] * 1.0), out)  # one channel: the grey image itself
    assert not list(Sobel().parameters()) and not Sobel().state_dict()
