"""Weighted kNN: hand-computed votes, chunking, the KNN evaluator on a context."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup_eval.evaluation import EvalContext
from selfsup_eval.knn import KNN, knn_class_scores, knn_predict

# bank vectors are unit length, so cosines are plain dot products
BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0], [0.8, 0.6]])
BANK_LABELS = torch.tensor([0, 1, 1, 2, 0])
QUERIES = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])  # the second and third are not unit length


def test_votes_are_exp_of_cosine_over_t_summed_per_class():
    scores = knn_class_scores(QUERIES, BANK, BANK_LABELS, 3, k=3, temperature=0.1)
    e = math.exp
    expected = [
        # [1, 0]: neighbours b0 (cos 1, class 0), b4 (0.8, class 0), b2 (0.6, class 1)
        [e(10) + e(8), e(6), 0.0],
        # [0, 1]: b1 (1, class 1), b2 (0.8, class 1), b4 (0.6, class 0)
        [e(6), e(10) + e(8), 0.0],
        # [-1, 0]: b3 (1, class 2), b1 (0, class 1), b2 (-0.6, class 1)
        [0.0, e(0) + e(-6), e(10)],
    ]
    torch.testing.assert_close(scores, torch.tensor(expected), rtol=1e-5, atol=0)
    assert knn_predict(QUERIES, BANK, BANK_LABELS, 3, k=3, temperature=0.1)[:, 0].tolist() == [0, 1, 2]


def test_temperature_decides_between_one_close_and_two_far_neighbours():
    query = QUERIES[2:]
    # T = 0.1: the single very close class-2 neighbour wins; T = 10: the two class-1 ones do
    assert knn_predict(query, BANK, BANK_LABELS, 3, k=3, temperature=0.1)[0, 0] == 2
    assert knn_predict(query, BANK, BANK_LABELS, 3, k=3, temperature=10.0)[0, 0] == 1
    hot = knn_class_scores(query, BANK, BANK_LABELS, 3, k=3, temperature=10.0)
    assert hot[0].tolist() == pytest.approx([0.0, 1.0 + math.exp(-0.06), math.exp(0.1)], rel=1e-6)


def test_k_larger_than_the_bank_uses_every_sample():
    scores = knn_class_scores(QUERIES[:1], BANK, BANK_LABELS, 3, k=200, temperature=1.0)
    e = math.exp
    assert scores[0].tolist() == pytest.approx([e(1) + e(0.8), e(0) + e(0.6), e(-1)], rel=1e-6)


def test_chunked_and_unchunked_paths_agree():
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(517, 16, generator=generator)
    labels = torch.randint(0, 10, (517,), generator=generator)
    queries = torch.randn(123, 16, generator=generator)
    whole = knn_class_scores(queries, bank, labels, 10, k=20, temperature=0.07)
    for query_chunk, bank_chunk in ((7, None), (None, 33), (5, 19), (123, 517), (1, 1)):
        chunked = knn_class_scores(queries, bank, labels, 10, k=20, temperature=0.07,
                                   query_chunk_size=query_chunk, bank_chunk_size=bank_chunk)
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=0)
    # a memory budget that allows only a few query rows per block chunks automatically
    tiny_budget = knn_class_scores(queries, bank, labels, 10, k=20, temperature=0.07, memory_budget_mb=0.01)
    torch.testing.assert_close(tiny_budget, whole, rtol=1e-5, atol=0)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor | None) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        item = {"img": self.features[i], "idx": i}
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item


def _context(train, test, **kwargs) -> EvalContext:
    return EvalContext(model=nn.Identity(), datasets={"train": lambda: train, "test": lambda: test},
                       samples_per_gpu=kwargs.pop("samples_per_gpu", 4), workers_per_gpu=0, **kwargs)


def test_knn_evaluator_scores_the_test_split_against_the_train_split():
    train = _Rows(BANK, BANK_LABELS)
    test = _Rows(QUERIES, torch.tensor([0, 0, 2]))  # the second query is predicted 1: wrong
    results = KNN(k=3, temperature=0.1).evaluate(_context(train, test))
    assert results == pytest.approx({"knn_top1": 2 / 3, "knn_top5": 1.0})
    # several k from one search; top-2 only
    results = KNN(k=[3, 1], temperature=0.1, topk=[1, 2]).evaluate(_context(train, test))
    assert results == pytest.approx({"knn_top1": 2 / 3, "knn_top2": 1.0, "knn_k1_top1": 2 / 3, "knn_k1_top2": 2 / 3})


def test_knn_evaluator_chunking_does_not_change_the_result():
    generator = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 8, generator=generator) * 3
    train_labels = torch.arange(200) % 5
    test_labels = torch.arange(60) % 5
    train = _Rows(centres[train_labels] + torch.randn(200, 8, generator=generator), train_labels)
    test = _Rows(centres[test_labels] + torch.randn(60, 8, generator=generator), test_labels)
    whole = KNN(k=20).evaluate(_context(train, test, samples_per_gpu=64))
    chunked = KNN(k=20, query_chunk_size=7, bank_chunk_size=13).evaluate(_context(train, test, samples_per_gpu=64))
    assert whole == chunked and whole["knn_top1"] > 0.9


def test_knn_evaluator_reuses_extracted_features_within_one_context():
    train, test = _Rows(BANK, BANK_LABELS), _Rows(QUERIES, torch.tensor([0, 1, 2]))
    context = _context(train, test)
    KNN(k=3).evaluate(context)
    assert {key[:2] for key in context.cache if key[0] == "features"} == {("features", "train"), ("features", "test")}
    context.datasets = {}  # a second evaluator must not need the datasets again
    assert KNN(k=1).evaluate(context)["knn_top1"] == 1.0


def test_unlabelled_bank_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"KNN: the \[evaluation.train\] dataset gives no 'label'"):
        KNN().evaluate(_context(_Rows(BANK, None), _Rows(QUERIES, torch.tensor([0, 1, 2]))))
    for kwargs, message in (({"k": 0}, "k must be a positive integer"), ({"temperature": 0}, "temperature must be > 0"),
                            ({"feature": "head"}, "feature must be one of"), ({"pool": "max"}, "pool must be one of"),
                            ({"query_chunk_size": 0}, "query_chunk_size must be >= 1")):
        with pytest.raises(ValueError, match=f"KNN: {message}"):
            KNN(**kwargs)
