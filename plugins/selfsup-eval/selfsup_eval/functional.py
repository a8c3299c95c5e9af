"""kNN and linear-probe evaluation on feature tensors, without a config or an ``EvalContext``.

For a plain PyTorch loop: extract features yourself (``backbone(x)[-1]`` average-pooled), then

    top1 = knn_top1(train_feats, train_labels, test_feats, test_labels, k=200, temperature=0.1)
    result = linear_probe(train_feats, train_labels, test_feats, test_labels, epochs=100)

These run the same code as the ``KNN`` and ``LinearProbe`` evaluators (weighted kNN of the
InstDisc protocol; BN without affine + linear layer, SGD, cosine lr, the same initialisation),
so their numbers match ``selfsup-run eval`` on the same features.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from .knn import knn_class_scores, knn_predict, topk_correct
from .linear import LinearProbe, score


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, *, k: int = 200, temperature: float = 0.1,
             num_classes: int | None = None) -> float:
    """Weighted-kNN top-1 accuracy (a fraction) of ``test_features (Q, D)`` against the bank
    ``train_features (N, D)`` with ``train_labels (N,)``; cosine similarity, votes
    ``exp(sim / temperature)`` from the ``k`` nearest; ``num_classes`` defaults to the
    largest label + 1."""
    return knn_topk_accuracy(train_features, train_labels, test_features, test_labels, k=k,
                             temperature=temperature, num_classes=num_classes, topk=(1,))[1]


def knn_topk_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                      test_labels: torch.Tensor, *, k: int = 200, temperature: float = 0.1,
                      num_classes: int | None = None, topk: Sequence[int] = (1, 5)) -> dict[int, float]:
    """``{t: top-t accuracy}`` of the weighted kNN (see :func:`knn_top1`)."""
    train_labels = train_labels.reshape(-1).long()
    test_labels = test_labels.reshape(-1).long().to(test_features.device)
    classes = num_classes if num_classes is not None else int(max(train_labels.max(), test_labels.max())) + 1
    scores = knn_class_scores(test_features, train_features, train_labels.to(train_features.device), classes,
                              k=k, temperature=temperature)
    correct = topk_correct(scores, test_labels, topk)
    count = max(1, test_labels.numel())
    return {t: int(c) / count for t, c in correct.items()}


class _Context:
    """The few ``EvalContext`` members the linear probe's training loop reads."""

    def __init__(self, device: torch.device, seed: int, verbose: bool) -> None:
        self.device = device
        self.seed = seed
        self.rank = 0
        self.world_size = 1
        self._verbose = verbose

    def message(self, text: str) -> None:
        if self._verbose:
            print(text)

    def eval_mode(self) -> Any:  # pragma: no cover - only the uncached path uses it
        return contextlib.nullcontext()


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, epochs: int = 100, lr: float = 0.1, batch_size: int = 256,
                 momentum: float = 0.9, weight_decay: float = 0.0, warmup_epochs: int = 0, bn: bool = True,
                 optimizer: str = "SGD", num_classes: int | None = None, seed: int = 0,
                 verbose: bool = False) -> dict[str, Any]:
    """Train a linear classifier on frozen ``train_features (N, D)`` / ``train_labels (N,)``
    and score it on the test tensors.

    Arguments as :class:`selfsup_eval.linear.LinearProbe` (``lr`` is per 256 samples and scaled
    by ``batch_size / 256``); ``seed`` seeds the classifier's initialisation and the batch
    order. Returns ``{"linear_top1", "linear_top5", "linear_train_loss", "classifier"}``.
    """
    probe = LinearProbe(num_classes=num_classes, bn=bn, optimizer=optimizer, lr=lr, momentum=momentum,
                        weight_decay=weight_decay, epochs=epochs, warmup_epochs=warmup_epochs,
                        batch_size=batch_size, cache_features=True)
    features = train_features.float()
    labels = train_labels.reshape(-1).long().to(features.device)
    classes = probe._resolve_classes(int(labels.max()) + 1)
    count = features.shape[0]
    steps = max(1, count // batch_size)
    generator = torch.Generator().manual_seed(seed)
    context = _Context(features.device, seed, verbose)
    classifier = probe.build_classifier(int(features.shape[1]), classes, generator).to(features.device)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(count, generator=generator).to(features.device)
        for step in range(steps):
            chosen = order[step * batch_size:(step + 1) * batch_size]
            yield features[chosen], labels[chosen]

    loss = probe._fit(context, classifier, batches, steps, reduce_grads=False)  # type: ignore[arg-type]
    top1, top5 = score(classifier, test_features.float().to(features.device), test_labels.reshape(-1).long(), classes)
    return {"linear_top1": top1, "linear_top5": top5, "linear_train_loss": loss, "classifier": classifier}


__all__ = ["knn_class_scores", "knn_predict", "knn_top1", "knn_topk_accuracy", "linear_probe", "topk_correct"]
