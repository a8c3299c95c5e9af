"""InterCLR's positive and negative sampling from a clustered memory bank.

Xie et al., "Delving into Inter-Image Invariance for Unsupervised Visual Representations"
(IJCV 2022), Sec. 3: a query's inter-image positive is a random bank entry of its own cluster;
its ``neg_num`` negatives are bank entries of *other* clusters, chosen by one of the paper's
strategies (MMSelfSup 0.x ``InterCLRMoCo.contrast_inter``, option ``neg_sampling``):

- ``"random"``: uniformly over every sample outside the query's cluster (with replacement);
- ``"semihard"``: uniformly (without replacement) from the ``pool_num`` bank entries most
  similar to the query, those of the query's cluster redrawn uniformly from the pool's others;
- ``"semieasy"``: the same from the ``pool_num`` *least* similar entries;
- ``"hard"``: the ``neg_num`` most similar entries outside the query's cluster, most similar
  first.

0.x redraws the entries that fall in the query's cluster in a loop until none does; the
functions here draw from the same distributions directly (no loop, no host synchronisation
per redraw). Every function takes ``generator`` for reproducible tests.
"""
from __future__ import annotations

import torch

NEG_SAMPLINGS = ("semihard", "semieasy", "random", "hard")


def cluster_layout(label_bank: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, starts, counts)``: bank indices sorted by label (stable), the position in
    ``order`` where each cluster's block starts, and each cluster's size."""
    order = torch.argsort(label_bank, stable=True)
    counts = torch.bincount(label_bank, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    return order, starts, counts


def _uniform_below(bound: torch.Tensor, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """Integers uniform in ``[0, bound)`` (``bound`` broadcast against ``shape``), long."""
    u = torch.rand(shape, generator=generator, device=bound.device, dtype=torch.float64)
    return torch.minimum((u * bound).long(), bound - 1)


def sample_positives(label_bank: torch.Tensor, pos_label: torch.Tensor, num_classes: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One bank index per query, uniform over the bank entries labelled ``pos_label[i]``
    (the query's own entry included, as 0.x). ``(N,)`` long."""
    order, starts, counts = cluster_layout(label_bank, num_classes)
    size = counts[pos_label]
    if bool((size == 0).any()):
        raise ValueError("InterCLR: a query's cluster is empty in the memory bank")
    return order[starts[pos_label] + _uniform_below(size, tuple(pos_label.shape), generator)]


def random_negatives(label_bank: torch.Tensor, pos_label: torch.Tensor, neg_num: int, num_classes: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, neg_num)`` bank indices uniform (with replacement) over the samples whose label is
    not ``pos_label[i]``: a position is drawn among the ``length - n_c`` sorted positions
    outside cluster ``c``'s block and mapped back to a bank index."""
    order, starts, counts = cluster_layout(label_bank, num_classes)
    outside = (label_bank.numel() - counts[pos_label]).unsqueeze(1)
    if bool((outside == 0).any()):
        raise ValueError("InterCLR: every sample of the memory bank is in one cluster; no negative can be drawn")
    u = _uniform_below(outside, (pos_label.numel(), neg_num), generator)
    start = starts[pos_label].unsqueeze(1)
    u = u + counts[pos_label].unsqueeze(1) * (u >= start).long()
    return order[u]


def pool_negatives(similarity: torch.Tensor, label_bank: torch.Tensor, pos_label: torch.Tensor, neg_num: int,
                   pool_num: int, largest: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Semi-hard (``largest``) or semi-easy negatives: ``neg_num`` of the ``pool_num`` entries
    most (least) similar to each query, drawn without replacement; a drawn entry of the query's
    own cluster is replaced by one drawn uniformly from the pool's other-cluster entries.

    Args:
        similarity: ``(N, length)`` query-bank similarities.
        label_bank: ``(length,)`` labels; ``pos_label``: ``(N,)`` each query's label.
    """
    pool = torch.topk(similarity, pool_num, dim=1, largest=largest, sorted=True).indices  # (N, P)
    weights = torch.ones(pool.shape, dtype=torch.float, device=pool.device)
    chosen = torch.gather(pool, 1, torch.multinomial(weights, neg_num, generator=generator))
    same = label_bank[chosen] == pos_label.unsqueeze(1)
    if bool(same.any()):
        valid = (label_bank[pool] != pos_label.unsqueeze(1)).float()
        if bool((valid.sum(dim=1) == 0).any()):
            raise ValueError(f"InterCLR: the {pool_num} {'most' if largest else 'least'} similar bank entries of a "
                             "query all share its cluster; raise the negative pool size (semihard_neg_pool_num / "
                             "semieasy_neg_pool_num)")
        redrawn = torch.gather(pool, 1, torch.multinomial(valid, neg_num, replacement=True, generator=generator))
        chosen = torch.where(same, redrawn, chosen)
    return chosen


def hard_negatives(similarity: torch.Tensor, label_bank: torch.Tensor, pos_label: torch.Tensor, neg_num: int,
                   num_classes: int) -> torch.Tensor:
    """The ``neg_num`` bank entries most similar to each query outside its cluster, most
    similar first (``(N, neg_num)``): 0.x takes the top ``neg_num + largest cluster size``
    and deletes the query cluster's entries."""
    largest_cluster = int(torch.bincount(label_bank, minlength=num_classes).max())
    k = min(neg_num + largest_cluster, similarity.size(1))
    top = torch.topk(similarity, k, dim=1, largest=True, sorted=True).indices
    valid = label_bank[top] != pos_label.unsqueeze(1)
    keep = valid & (torch.cumsum(valid.long(), dim=1) <= neg_num)
    if bool((keep.sum(dim=1) < neg_num).any()):
        raise ValueError(f"InterCLR: fewer than neg_num = {neg_num} bank entries lie outside a query's cluster; "
                         "lower neg_num")
    return top[keep].view(top.size(0), neg_num)


def sample_negatives(mode: str, similarity: torch.Tensor | None, label_bank: torch.Tensor, pos_label: torch.Tensor,
                     neg_num: int, num_classes: int, pool_num: int = 0,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``(N, neg_num)`` negative bank indices by strategy ``mode`` (see the module docstring);
    ``similarity (N, length)`` is needed by every mode but ``"random"``."""
    if mode == "random":
        return random_negatives(label_bank, pos_label, neg_num, num_classes, generator)
    if similarity is None:
        raise ValueError(f"sample_negatives: mode {mode!r} needs the query-bank similarities")
    if mode in ("semihard", "semieasy"):
        return pool_negatives(similarity, label_bank, pos_label, neg_num, pool_num, mode == "semihard", generator)
    if mode == "hard":
        return hard_negatives(similarity, label_bank, pos_label, neg_num, num_classes)
    raise ValueError(f"InterCLR: neg_sampling must be one of {', '.join(map(repr, NEG_SAMPLINGS))}, got {mode!r}")


__all__ = ["NEG_SAMPLINGS", "cluster_layout", "hard_negatives", "pool_negatives", "random_negatives",
           "sample_negatives", "sample_positives"]
