"""k-means for DeepCluster and ODC: PCA-whitening, L2 normalisation and Lloyd iterations.

:class:`Kmeans` follows DeepCluster's (and MMSelfSup's) ``Kmeans``: the features are
PCA-reduced to ``pca_dim`` dimensions and whitened (each principal component divided by the
square root of its eigenvalue, faiss's ``PCAMatrix(eigen_power=-0.5)``), L2-normalised, then
clustered by ``iterations`` Lloyd iterations (from a k-means++ start, or from ``k``
distinct random samples as in the paper). The torch
implementation runs on the features' device (GPU when training on one); faiss is used when
installed and asked for (``backend = "faiss"``, or ``"auto"``).
"""
from __future__ import annotations

import importlib.util

import torch

BACKENDS = ("auto", "torch", "faiss")
INITS = ("k-means++", "random")
# The split of an empty cluster moves the two centroids apart by this relative amount (faiss's EPS).
SPLIT_EPS = 1.0 / 1024.0


def l2_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    return x / (x.norm(dim=1, keepdim=True) + eps)


def pca_whiten(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x (N, D)`` projected on its ``dim`` leading principal components and whitened.

    ``(x - mean) @ V[:, :dim] / sqrt(lambda[:dim])`` with ``V``/``lambda`` the eigenvectors
    and eigenvalues of the covariance (computed in float64); components with (numerically)
    zero variance are left unscaled. Eigenvectors are sign-fixed (largest entry positive) so
    the result does not depend on the eigensolver's choice.
    """
    x = x.float()
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    cov = (centred.t().double() @ centred.double()) / max(x.shape[0] - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0)[:dim], eigenvectors.flip(1)[:, :dim]
    signs = torch.sign(eigenvectors.gather(0, eigenvectors.abs().argmax(dim=0, keepdim=True)))
    eigenvectors = eigenvectors * torch.where(signs == 0, torch.ones_like(signs), signs)
    floor = eigenvalues.abs().max().clamp_min(1e-30) * 1e-10
    scale = torch.where(eigenvalues > floor, eigenvalues.clamp_min(floor).rsqrt(), torch.ones_like(eigenvalues))
    return centred @ (eigenvectors * scale).to(x.dtype)


def _assign(x: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (squared Euclidean) of every row, and that squared distance."""
    c_sq = (centroids * centroids).sum(dim=1)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dists = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin
        scores = torch.addmm(c_sq.unsqueeze(0), part, centroids.t(), alpha=-2.0)
        best, labels[start : start + chunk] = scores.min(dim=1)
        dists[start : start + chunk] = best + (part * part).sum(dim=1)
    return labels, dists


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` initial centroids by k-means++ (Arthur & Vassilvitskii, 2007): the first uniformly,
    each next one a sample drawn with probability proportional to its squared distance to the
    nearest centroid chosen so far. ``generator`` lives on ``x``'s device."""
    n = x.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    chosen[0] = torch.randint(n, (1,), generator=generator, device=x.device)
    nearest = ((x - x[chosen[0]]) ** 2).sum(dim=1)
    for i in range(1, k):
        weights = nearest.clamp_min(0)
        total = weights.sum()
        # all remaining samples coincide with centroids: any sample will do
        weights = torch.where(total > 0, weights, torch.ones_like(weights))
        chosen[i] = torch.multinomial(weights, 1, generator=generator)[0]
        nearest = torch.minimum(nearest, ((x - x[chosen[i]]) ** 2).sum(dim=1))
    return x[chosen].clone()


def kmeans(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0, init: str = "k-means++"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means of ``x (N, D)`` into ``k`` clusters on ``x``'s device.

    Starts from k-means++ seeding (``init = "k-means++"``) or from ``k`` distinct random
    samples (``"random"``, as faiss and the DeepCluster paper), seeded by ``seed``; each
    iteration assigns every sample to its nearest centroid and moves each centroid to the
    mean of its samples. A cluster that becomes empty takes half of the largest cluster
    (faiss's rule: that centroid is duplicated and the two copies are pushed apart by
    ``1/1024`` of their value). Stops early when no label changes.

    Returns ``(labels (N,) int64, centroids (k, D))``.
    """
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"kmeans: k must be >= 1, got {k}")
    if n < k:
        raise ValueError(f"kmeans: {n} samples cannot form {k} clusters; use k <= {n} or more samples")
    if init not in INITS:
        raise ValueError(f"kmeans: init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
    x = x.float()
    if init == "random":
        generator = torch.Generator().manual_seed(seed)
        centroids = x[torch.randperm(n, generator=generator)[:k].to(x.device)].clone()
    else:
        centroids = kmeans_plus_plus(x, k, torch.Generator(device=x.device).manual_seed(seed))
    chunk = max(1, (1 << 24) // max(k, 1))
    labels = None
    for _ in range(max(iterations, 1)):
        new_labels, _ = _assign(x, centroids, chunk)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(x.dtype)
        if not bool(filled.all()):
            _split_largest(centroids, counts)
    labels, _ = _assign(x, centroids, chunk)
    return labels, centroids


def _split_largest(centroids: torch.Tensor, counts: torch.Tensor) -> None:
    """Give every empty cluster half of the currently largest one (in place)."""
    counts = counts.clone()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(counts.argmax())
        centroids[empty] = centroids[largest] * (1 + SPLIT_EPS)
        centroids[largest] = centroids[largest] * (1 - SPLIT_EPS)
        half = counts[largest] // 2
        counts[empty] = half
        counts[largest] -= half


def faiss_available() -> bool:
    """Whether the optional ``faiss`` package is installed (found without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def kmeans_faiss(x: torch.Tensor, k: int, iterations: int = 20, seed: int = 0) -> torch.Tensor:
    """k-means with faiss (CPU index; ``max_points_per_centroid`` unlimited, as DeepCluster)."""
    import faiss
    import numpy as np

    data = np.ascontiguousarray(x.detach().float().cpu().numpy())
    clustering = faiss.Clustering(data.shape[1], k)
    clustering.seed = seed
    clustering.niter = iterations
    clustering.max_points_per_centroid = 10_000_000
    index = faiss.IndexFlatL2(data.shape[1])
    clustering.train(data, index)
    _, nearest = index.search(data, 1)
    return torch.from_numpy(nearest.reshape(-1).astype(np.int64)).to(x.device)


class Kmeans:
    """DeepCluster's clustering: PCA-whitening, L2 normalisation, k-means.

    Args:
        k: number of clusters.
        pca_dim: PCA-whitening dimension (DeepCluster: 256); ``-1`` skips PCA (ODC), and a
            value at least the feature dimension keeps every component (whitening only).
        iterations: Lloyd iterations (faiss's ``niter``, 20 in DeepCluster).
        seed: seed of the initial centroids (with ``seed_per_round``, one input of each
            round's seed, see :meth:`round_seed`).
        seed_per_round: give every clustering round its own seed (MMSelfSup 0.x draws a fresh
            one per round, so the initial centroids differ); false: ``seed`` every round.
        init: ``"k-means++"`` (default) or ``"random"`` (``k`` random samples, faiss's and
            the paper's start; faiss always uses its own) for the torch k-means.
        backend: ``"torch"`` (on the features' device), ``"faiss"``, or ``"auto"`` (faiss
            when it is installed, else torch).
    """

    def __init__(self, k: int, pca_dim: int = 256, iterations: int = 20, seed: int = 0, init: str = "k-means++",
                 backend: str = "auto", seed_per_round: bool = True) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"Kmeans: k must be an integer >= 2, got {k!r}")
        if pca_dim != -1 and pca_dim < 1:
            raise ValueError(f"Kmeans: pca_dim must be -1 (no PCA) or >= 1, got {pca_dim}")
        if iterations < 1:
            raise ValueError(f"Kmeans: iterations must be >= 1, got {iterations}")
        if init not in INITS:
            raise ValueError(f"Kmeans: init must be one of {', '.join(map(repr, INITS))}, got {init!r}")
        if backend not in BACKENDS:
            raise ValueError(f"Kmeans: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        self.k = k
        self.pca_dim = pca_dim
        self.iterations = iterations
        self.seed = seed
        self.init = init
        self.backend = backend
        self.seed_per_round = bool(seed_per_round)

    def round_seed(self, run_seed: int, round_index: int) -> int:
        """The k-means seed of clustering round ``round_index`` (0 = before the first epoch):
        ``seed`` without ``seed_per_round``; else an integer in ``[0, 2**31)`` drawn from a
        generator seeded by ``(run_seed, seed, round_index)``, so rounds differ and a run
        (or its resumption) repeats them."""
        if not self.seed_per_round:
            return self.seed
        mixed = ((int(run_seed) * 1_000_003 + int(self.seed)) * 1_000_033 + int(round_index)) % (2**63 - 1)
        generator = torch.Generator().manual_seed(mixed)
        return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

    def preprocess(self, features: torch.Tensor) -> torch.Tensor:
        """PCA-whitened (unless ``pca_dim == -1``) and L2-normalised features, float32."""
        x = features.float()
        if self.pca_dim != -1:
            x = pca_whiten(x, min(self.pca_dim, x.shape[1]))
        return l2_normalize(x)

    def use_faiss(self) -> bool:
        if self.backend == "faiss" and not faiss_available():
            raise ImportError("Kmeans: backend = 'faiss' but faiss is not installed; "
                              "pip install 'selfsup-clustering[faiss]' or use backend = 'torch'")
        return self.backend == "faiss" or (self.backend == "auto" and faiss_available())

    def cluster(self, features: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """Labels ``(N,)`` int64 (on the features' device) of ``features (N, D)``; ``seed``
        overrides ``self.seed`` for this call (a round's seed, :meth:`round_seed`)."""
        seed = self.seed if seed is None else int(seed)
        n = features.shape[0]
        if n < self.k:
            raise ValueError(f"Kmeans: {n} samples cannot form k = {self.k} clusters; lower k to at most {n} "
                             "or cluster more samples")
        if not torch.isfinite(features).all():
            raise ValueError("Kmeans: the features contain NaN or infinite values")
        x = self.preprocess(features)
        if self.use_faiss():
            return kmeans_faiss(x, self.k, self.iterations, seed)
        labels, _ = kmeans(x, self.k, self.iterations, seed, self.init)
        return labels


def cluster_stats(labels: torch.Tensor, k: int) -> dict[str, int]:
    """``{"empty_clusters", "min_cluster", "max_cluster"}`` of ``labels`` over ``k`` clusters."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=k)
    values = torch.stack([(counts == 0).sum(), counts.min(), counts.max()]).tolist()
    return dict(zip(("empty_clusters", "min_cluster", "max_cluster"), values))


__all__ = ["BACKENDS", "INITS", "Kmeans", "cluster_stats", "faiss_available", "kmeans", "kmeans_faiss", "kmeans_plus_plus", "l2_normalize",
           "pca_whiten"]
