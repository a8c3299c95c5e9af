"""MMSelfSup 0.x fidelity of the clustering mechanisms: ODC's small-cluster split is
scikit-learn's ``KMeans(n_clusters=2, random_state=0, max_iter=20)`` of the largest cluster
with the new label on its ``labels_ == 1`` half (0.x's ``_partition_max_cluster``), and
DeepCluster's k-means gets a fresh seed every round (0.x draws ``np.random.randint(1234)``;
that test is in test_deepcluster.py, next to its fixtures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from selfsup_models.memories import ODCMemory



def _mmselfsup_small_cluster_step(features: np.ndarray, labels: np.ndarray, centroids: np.ndarray,
                                  num_classes: int, min_cluster: int) -> tuple[np.ndarray, np.ndarray]:
    """0.x's ``ODCMemory.deal_with_small_clusters`` on one process, by hand."""
    from sklearn.cluster import KMeans

    labels, centroids = labels.copy(), centroids.copy()
    counts = np.bincount(labels, minlength=num_classes)
    small = np.where(counts < min_cluster)[0]
    inclusion = np.array([c for c in range(num_classes) if c not in set(small)])
    moving = np.where(np.isin(labels, small))[0]
    if len(moving):
        labels[moving] = inclusion[np.argmax(features[moving] @ centroids[inclusion].T, axis=1)]
    for empty in small:
        largest = np.bincount(labels, minlength=num_classes).argmax()
        members = np.where(labels == largest)[0]
        fitted = KMeans(n_clusters=2, random_state=0, max_iter=20, n_init=10).fit(features[members])
        labels[members[fitted.labels_ == 1]] = empty
        for c in (largest, empty):
            centroids[c] = features[labels == c].mean(axis=0)
    return labels, centroids


def test_odc_split_is_scikit_learn_kmeans_as_0x_calls_it():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    n, dim, k = 300, 8, 6
    centres = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    labels = torch.randint(0, k - 1, (n,), generator=g)
    labels[:3] = k - 1                                  # cluster 5 is small: 3 < min_cluster
    features = F.normalize(centres[labels] + 0.6 * torch.randn(n, dim, generator=g), dim=1)
    memory = ODCMemory(length=n, feat_dim=dim, momentum=0.5, num_classes=k, min_cluster=10)
    memory.init_memory(features, labels)
    want_labels, want_centroids = _mmselfsup_small_cluster_step(
        memory.feature_bank.numpy(), memory.label_bank.numpy(), memory.centroids.numpy(), k, 10)
    memory.deal_with_small_clusters()
    assert memory.label_bank.tolist() == want_labels.tolist()
    torch.testing.assert_close(memory.centroids, torch.from_numpy(want_centroids), rtol=1e-5, atol=1e-6)
    # the torch 2-means alternative (split = "two_means") refills the emptied cluster too
    other = ODCMemory(length=n, feat_dim=dim, momentum=0.5, num_classes=k, min_cluster=10, split="two_means")
    other.init_memory(features, labels)
    other.deal_with_small_clusters()
    assert int(torch.bincount(other.label_bank, minlength=k)[k - 1]) > 0


def test_odc_split_names_scikit_learn_when_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError("No module named 'sklearn'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ValueError, match="pip install scikit-learn, or set split = \"two_means\""):
        ODCMemory(length=4, feat_dim=2, momentum=0.5, num_classes=2)
    ODCMemory(length=4, feat_dim=2, momentum=0.5, num_classes=2, split="two_means")
    with pytest.raises(ValueError, match="split must be"):
        ODCMemory(length=4, feat_dim=2, momentum=0.5, num_classes=2, split="sklearn")
