"""Weighted k-nearest-neighbour classification of features (the InstDisc protocol).

Every test image votes with its ``k`` most similar training images (the bank): features are
L2-normalised, similarity is the cosine, and each neighbour's vote for its class weighs
``exp(similarity / T)``. The class with the largest summed weight is the prediction. This is
the monitor of Wu et al. 2018 (InstDisc) that the MoCo papers, lightly and solo-learn use,
with their defaults ``k = 200``, ``T = 0.1``.

Similarities are computed in chunks (``query_chunk_size`` test rows against
``bank_chunk_size`` bank rows at a time, the running top-k merged across bank chunks), so
that an ImageNet-sized bank (1.28M x 2048) against 50k queries stays within
``memory_budget_mb`` of device memory on top of the features themselves.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from selfsup_core.api import dist

from .evaluation import EvalContext

from .features import FEATURES, POOLS, check_choice, extract, require_labels


def _chunk_sizes(num_queries: int, num_bank: int, query_chunk: int | None, bank_chunk: int | None,
                 budget_bytes: int) -> tuple[int, int]:
    """Rows per chunk: the whole bank at once unless asked otherwise, and as many queries as
    keep one ``(queries, bank rows)`` float32 similarity block within the budget."""
    bank_rows = max(1, min(bank_chunk or num_bank, num_bank))
    query_rows = query_chunk or max(1, budget_bytes // (4 * bank_rows))
    return max(1, min(query_rows, max(num_queries, 1))), bank_rows


def knn_topk(query: torch.Tensor, bank: torch.Tensor, k: int, *, bank_chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest similarities of each query row against the bank, and their bank
    indices, sorted in descending order; bank chunks are merged with a running top-k."""
    best_sim: torch.Tensor | None = None
    best_idx: torch.Tensor | None = None
    for start in range(0, bank.shape[0], bank_chunk_size):
        block = query @ bank[start : start + bank_chunk_size].T
        sim, idx = block.topk(min(k, block.shape[1]), dim=1)
        idx = idx + start
        if best_sim is not None:
            sim = torch.cat([best_sim, sim], dim=1)
            idx = torch.cat([best_idx, idx], dim=1)
            sim, order = sim.topk(min(k, sim.shape[1]), dim=1)
            idx = idx.gather(1, order)
        best_sim, best_idx = sim, idx
    assert best_sim is not None and best_idx is not None
    return best_sim, best_idx


def knn_class_scores(
    query: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    num_classes: int,
    *,
    k: int = 200,
    temperature: float = 0.1,
    query_chunk_size: int | None = None,
    bank_chunk_size: int | None = None,
    memory_budget_mb: float = 1024,
    normalize: bool = True,
) -> torch.Tensor:
    """Summed vote weights ``(Q, num_classes)`` of each query row.

    Args:
        query: ``(Q, D)`` features to classify; bank: ``(N, D)`` features with
            ``bank_labels`` ``(N,)`` in ``[0, num_classes)``.
        k: neighbours per query (capped at ``N``); temperature: ``T`` of ``exp(sim / T)``.
        normalize: L2-normalise both sides first (similarity = cosine).
    """
    if normalize:
        query, bank = F.normalize(query.float(), dim=1), F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    query_rows, bank_rows = _chunk_sizes(query.shape[0], bank.shape[0], query_chunk_size, bank_chunk_size,
                                         int(memory_budget_mb * 2**20))
    bank_labels = bank_labels.to(bank.device).long()
    scores = []
    for start in range(0, query.shape[0], query_rows):
        sim, idx = knn_topk(query[start : start + query_rows], bank, k, bank_chunk_size=bank_rows)
        weights = (sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
        scores.append(votes.scatter_add_(1, bank_labels[idx], weights))
    return torch.cat(scores) if scores else query.new_zeros(0, num_classes)


def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                **kwargs: Any) -> torch.Tensor:
    """Classes ranked by vote weight ``(Q, num_classes)``: column 0 is the prediction."""
    scores = knn_class_scores(query, bank, bank_labels, num_classes, **kwargs)
    return scores.sort(dim=1, descending=True, stable=True).indices


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, topk: Sequence[int]) -> dict[int, torch.Tensor]:
    """Number of rows whose label is among their ``t`` highest-scoring classes, for each
    ``t``. A class that received no vote is never a prediction (with ``k = 1`` top-5 is
    top-1), and ties are broken by class index."""
    ranked = scores.sort(dim=1, descending=True, stable=True)
    hits = (ranked.indices == labels.reshape(-1, 1)) & (ranked.values > 0)
    return {t: hits[:, : min(t, hits.shape[1])].any(dim=1).sum() for t in topk}


class KNN:
    """Weighted kNN accuracy of the test split against the train split as the bank.

    Args:
        k: neighbours (InstDisc/MoCo/lightly: 200). A list (``[10, 20, 100, 200]``, as
            MMSelfSup's kNN benchmark) scores every value from one neighbour search; the
            first is reported as ``knn_top1``/``knn_top5``, the others as
            ``knn_k{k}_top1``/``knn_k{k}_top5``.
        temperature: ``T`` in the vote weight ``exp(cosine / T)`` (0.1; MMSelfSup uses 0.07).
        topk: the accuracies reported (top-1 and top-5).
        feature, pool: which features (see :mod:`selfsup_eval.features`).
        query_chunk_size, bank_chunk_size: rows per similarity block (default: the whole bank
            and as many queries as ``memory_budget_mb`` allows).

    Returns ``{"knn_top1": ..., "knn_top5": ...}`` as fractions. Under torchrun every
    process extracts its shard, then scores a share of the test images; the counts are
    summed, so every process returns the same numbers.
    """

    def __init__(
        self,
        k: int | list[int] = 200,
        temperature: float = 0.1,
        topk: list[int] = (1, 5),  # type: ignore[assignment]
        feature: str = "extract",
        pool: str = "avg",
        normalize: bool = True,
        query_chunk_size: int | None = None,
        bank_chunk_size: int | None = None,
        memory_budget_mb: float = 1024,
    ) -> None:
        ks = [k] if isinstance(k, int) else list(k)
        if not ks or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in ks):
            raise ValueError(f"KNN: k must be a positive integer or a list of them, got {k!r}")
        if not temperature > 0:
            raise ValueError(f"KNN: temperature must be > 0, got {temperature!r}")
        if not topk or any(not isinstance(t, int) or t < 1 for t in topk):
            raise ValueError(f"KNN: topk must be a list of positive integers, got {topk!r}")
        for name, value in (("query_chunk_size", query_chunk_size), ("bank_chunk_size", bank_chunk_size)):
            if value is not None and value < 1:
                raise ValueError(f"KNN: {name} must be >= 1, got {value!r}")
        if not memory_budget_mb > 0:
            raise ValueError(f"KNN: memory_budget_mb must be > 0, got {memory_budget_mb!r}")
        self.ks = ks
        self.temperature = float(temperature)
        self.topk = tuple(topk)
        self.feature = check_choice("KNN", "feature", feature, FEATURES)
        self.pool = check_choice("KNN", "pool", pool, POOLS)
        self.normalize = normalize
        self.query_chunk_size = query_chunk_size
        self.bank_chunk_size = bank_chunk_size
        self.memory_budget_mb = memory_budget_mb

    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        bank = extract(context, "train", feature=self.feature, pool=self.pool)
        query = extract(context, "test", feature=self.feature, pool=self.pool)
        bank_labels = require_labels(bank, "train", "KNN")
        query_labels = require_labels(query, "test", "KNN")
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
        # this process's share of the queries (all processes hold every feature)
        mine = slice(context.rank, None, context.world_size)
        query_feats, labels = query.features[mine], query_labels[mine]
        bank_feats = bank.features
        if self.normalize:
            query_feats, bank_feats = F.normalize(query_feats, dim=1), F.normalize(bank_feats, dim=1)
        query_rows, bank_rows = _chunk_sizes(query_feats.shape[0], bank_feats.shape[0], self.query_chunk_size,
                                             self.bank_chunk_size, int(self.memory_budget_mb * 2**20))
        k_max = min(max(self.ks), bank_feats.shape[0])
        counts = torch.zeros(len(self.ks), len(self.topk), dtype=torch.long, device=bank_feats.device)
        bank_labels = bank_labels.to(bank_feats.device)
        for start in range(0, query_feats.shape[0], query_rows):
            sim, idx = knn_topk(query_feats[start : start + query_rows], bank_feats, k_max, bank_chunk_size=bank_rows)
            weights = (sim / self.temperature).exp()
            neighbour_labels = bank_labels[idx]
            target = labels[start : start + query_rows]
            for i, k in enumerate(self.ks):
                k = min(k, k_max)
                votes = torch.zeros(sim.shape[0], num_classes, device=sim.device, dtype=weights.dtype)
                votes.scatter_add_(1, neighbour_labels[:, :k], weights[:, :k])
                correct = topk_correct(votes, target, self.topk)
                counts[i] += torch.stack([correct[t] for t in self.topk])
        counts = dist.all_reduce(counts, op="sum")
        values = [[c / len(query) for c in row] for row in counts.tolist()]
        results: dict[str, Any] = {}
        for i, k in enumerate(self.ks):
            prefix = "knn" if i == 0 else f"knn_k{k}"
            for j, t in enumerate(self.topk):
                results[f"{prefix}_top{t}"] = values[i][j]
        return results


__all__ = ["KNN", "knn_class_scores", "knn_predict", "knn_topk", "topk_correct"]
