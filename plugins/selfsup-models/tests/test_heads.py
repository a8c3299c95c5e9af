"""Heads: losses against hand computations, nested predictor tables, Sinkhorn sums."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from selfsup_core.build import build
from selfsup_core.errors import ConfigError
from torch import nn

from selfsup_models.heads import (
    ClsHead,
    ContrastiveHead,
    LatentPredictHead,
    MoCoV3Head,
    SwAVHead,
    sinkhorn,
)
from selfsup_models.necks import LinearNeck, NonLinearNeck


def identity_predictor(dim: int) -> LinearNeck:
    """A LinearNeck whose output equals its input."""
    predictor = LinearNeck(dim, dim, with_avg_pool=False)
    with torch.no_grad():
        predictor.fc.weight.copy_(torch.eye(dim))
        predictor.fc.bias.zero_()
    return predictor


# -- ContrastiveHead --------------------------------------------------------------------------
def test_contrastive_head_hand_computed_2x3():
    # logits / T (T = 0.5): [[2, 1, 0], [1, 2, -2]], positives in column 0
    # row 1: log(1 + e^-1 + e^-2) = 0.4076059644443804
    # row 2: log(e^1 + e^2 + e^-2) - 1 = 1.3265626412674703
    head = build({"type": "ContrastiveHead", "temperature": 0.5}, "heads")
    pos = torch.tensor([[1.0], [0.5]])
    neg = torch.tensor([[0.5, 0.0], [1.0, -1.0]])
    loss = head(pos, neg)["loss"]
    assert loss.item() == pytest.approx(0.8670843028559253, abs=1e-6)


def test_contrastive_head_rejects_bad_shapes():
    with pytest.raises(ValueError, match="pos"):
        ContrastiveHead()(torch.zeros(2, 2), torch.zeros(2, 3))
    with pytest.raises(ConfigError):
        build({"type": "ContrastiveHead", "temperature": 0.0}, "heads")


# -- ClsHead / MultiClsHead -----------------------------------------------------------------
def test_cls_head_loss_and_accuracy():
    head = build({"type": "ClsHead", "in_channels": 2, "num_classes": 2}, "heads")
    assert torch.count_nonzero(head.fc_cls.bias) == 0 and head.fc_cls.weight.abs().max() < 0.1  # N(0, 0.01)
    with torch.no_grad():
        head.fc_cls.weight.copy_(torch.eye(2))
    scores = head((torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]]),))
    assert len(scores) == 1
    torch.testing.assert_close(scores[0], torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]]))
    losses = head.loss(scores, torch.tensor([0, 0, 0]))
    # mean(log(1 + e^-1), log(1 + e^3), log(1 + e^-4))
    assert losses["loss"].item() == pytest.approx(1.1266663223365916, abs=1e-6)
    assert losses["acc"].item() == pytest.approx(200 / 3, abs=1e-4)


def test_cls_head_avg_pool_and_vit():
    head = ClsHead(with_avg_pool=True, in_channels=3, num_classes=4)
    assert head((torch.randn(2, 3, 4, 4),))[0].shape == (2, 4)
    vit = ClsHead(in_channels=3, num_classes=4, vit_backbone=True)
    cls = torch.randn(2, 3)
    torch.testing.assert_close(vit(([torch.randn(2, 3, 2, 2), cls],))[0], vit.fc_cls(cls))


def test_multi_cls_head_resnet18_stages():
    head = build({"type": "MultiClsHead", "in_indices": [0, 1, 2, 3, 4], "backbone": "resnet18",
                  "with_last_layer_unpool": True, "num_classes": 10}, "heads")
    assert [fc.in_features for fc in head.fcs] == [64 * 144, 64 * 36, 128 * 16, 256 * 9, 512 * 4, 512 * 49]
    assert all(isinstance(n, nn.BatchNorm2d) for n in head.norms)
    feats = [torch.randn(2, c, s, s) for c, s in [(64, 24), (64, 12), (128, 8), (256, 7), (512, 7)]]
    scores = head(feats)
    assert len(scores) == 6 and all(s.shape == (2, 10) for s in scores)
    losses = head.loss(scores, torch.tensor([1, 2]))
    assert sorted(losses) == sorted([f"{k}.{i}" for k in ("loss", "acc") for i in ("1", "2", "3", "4", "5", "unpool")])
    no_norm = build({"type": "MultiClsHead", "in_indices": [4], "norm_cfg": {"type": "null"}, "num_classes": 2}, "heads")
    assert not hasattr(no_norm, "norms") and no_norm.fcs[0].in_features == 2048 * 4
    with pytest.raises(ConfigError, match="pool_type"):
        build({"type": "MultiClsHead", "pool_type": "pool4"}, "heads")


# -- LatentPredictHead ----------------------------------------------------------------------
def test_latent_predict_head_normalised_mse_by_hand():
    # pred = input: [1, 0] vs [0, 2] -> cos 0; [3, 4] vs [4, 3] -> cos 24/25 = 0.96
    # loss = mean(2 - 2 cos) = mean(2, 0.08) = 1.04
    head = LatentPredictHead(identity_predictor(2))
    inp = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[0.0, 2.0], [4.0, 3.0]], requires_grad=True)
    loss = head(inp, target)["loss"]
    assert loss.item() == pytest.approx(1.04, abs=1e-6)
    loss.backward()
    assert inp.grad is not None and target.grad is None  # target is detached


def test_latent_predict_head_builds_nested_predictor_table():
    table = {
        "type": "LatentPredictHead",
        "predictor": {"type": "NonLinearNeck", "in_channels": 4, "hid_channels": 16, "out_channels": 4,
                      "with_bias": True, "with_last_bn": False, "with_avg_pool": False, "norm_cfg": {"type": "BN"}},
    }
    head = build(table, "heads")
    assert isinstance(head.predictor, NonLinearNeck) and head.predictor.fc0.out_features == 16
    loss = head(torch.randn(3, 4), torch.randn(3, 4))["loss"]
    assert 0.0 <= loss.item() <= 4.0
    bad = {**table, "predictor": {**table["predictor"], "hid_channel": 16}}
    del bad["predictor"]["hid_channels"]
    with pytest.raises(ConfigError) as info:
        build(bad, "heads")
    assert "predictor.hid_channel" in str(info.value) and "hid_channels" in str(info.value)


def test_latent_predict_head_rejects_untyped_predictor():
    with pytest.raises(ConfigError, match="predictor: must be a table with a 'type' naming a neck component"):
        build({"type": "LatentPredictHead", "predictor": {"in_channels": 2}}, "heads")


# -- LatentClsHead --------------------------------------------------------------------------
def test_latent_cls_head_targets_argmax():
    head = build({"type": "LatentClsHead", "in_channels": 2, "num_classes": 3}, "heads")
    with torch.no_grad():
        head.predictor.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    inp = torch.tensor([[0.5, 0.2], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 3.0], [-2.0, -1.0]])  # argmax classes 1 and 2
    loss = head(inp, target)["loss"]
    expected = F.cross_entropy(head.predictor(inp), torch.tensor([1, 2]))
    torch.testing.assert_close(loss, expected)


# -- LatentCrossCorrelationHead -------------------------------------------------------------
def barlow_twins_by_loops(a: torch.Tensor, b: torch.Tensor, lambd: float) -> float:
    n, d = a.shape

    def standardise(x):
        cols = []
        for j in range(d):
            column = [float(x[i, j]) for i in range(n)]
            mean = sum(column) / n
            var = sum((v - mean) ** 2 for v in column) / n
            cols.append([(v - mean) / math.sqrt(var + 1e-5) for v in column])
        return cols  # cols[j][i]

    za, zb = standardise(a), standardise(b)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(za[i][k] * zb[j][k] for k in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_latent_cross_correlation_head_matches_loop_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    head = build({"type": "LatentCrossCorrelationHead", "in_channels": 3, "lambd": 0.3}, "heads")
    loss = head(a, b)["loss"]
    assert loss.item() == pytest.approx(barlow_twins_by_loops(a, b, 0.3), rel=1e-5)
    assert not any(p.requires_grad for p in head.parameters())  # BN without affine


# -- MoCoV3Head -------------------------------------------------------------------------------
@pytest.mark.parametrize(("temperature", "expected"), [(1.0, 0.9582192903668951), (0.5, 0.3300846500601321)])
def test_mocov3_head_hand_computed(temperature, expected):
    # q = [1, 0], [0, 1]; k = normalize([1, 0], [1, 1]) = [1, 0], [a, a] with a = 1/sqrt(2)
    # logits*T = [[1, a], [0, a]]; labels [0, 1]; loss = 2 T * mean CE
    # T = 1:   (log(e + e^a) - 1) + (log(1 + e^a) - a)         = 0.9582192903668951
    # T = 0.5: mean(log(e^2 + e^2a) - 2, log(1 + e^2a) - 2a)  = 0.3300846500601321
    head = MoCoV3Head(identity_predictor(2), temperature=temperature)
    loss = head(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 1.0]]))["loss"]
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_mocov3_head_builds_nested_predictor():
    head = build({"type": "MoCoV3Head", "temperature": 0.2, "predictor": {
        "type": "NonLinearNeck", "in_channels": 4, "hid_channels": 8, "out_channels": 4, "with_avg_pool": False,
        "with_last_bn_affine": False, "norm_cfg": {"type": "BN"}}}, "heads")
    assert head.predictor.bn1.weight is None
    assert torch.isfinite(head(torch.randn(3, 4), torch.randn(3, 4))["loss"])


# -- SwAV ---------------------------------------------------------------------------------------
def sinkhorn_by_loops(scores: list[list[float]], epsilon: float, iterations: int) -> list[list[float]]:
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][j] / epsilon) for i in range(b)] for j in range(k)]  # q[j][i]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / k for v in row] for row in q]
        col = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / col[i] / b for i in range(b)] for j in range(k)]
    return [[q[j][i] * b for j in range(k)] for i in range(b)]


def test_sinkhorn_matches_loop_computation():
    scores = [[0.1, 0.0, -0.1], [0.05, 0.2, 0.0]]
    for iterations in (0, 1, 3):
        q = sinkhorn(torch.tensor(scores), epsilon=0.1, iterations=iterations)
        torch.testing.assert_close(q, torch.tensor(sinkhorn_by_loops(scores, 0.1, iterations)))


def test_sinkhorn_sums():
    torch.manual_seed(0)
    batch, prototypes = 12, 4
    scores = F.normalize(torch.randn(batch, 8), dim=1) @ F.normalize(torch.randn(prototypes, 8), dim=1).T
    q = sinkhorn(scores, epsilon=0.5, iterations=3)
    assert q.shape == (batch, prototypes) and (q >= 0).all() and not q.requires_grad
    # each sample's row sums to 1 exactly
    torch.testing.assert_close(q.sum(dim=1), torch.ones(batch))
    # each prototype's column sums to B/K, approximately after the final row step ...
    torch.testing.assert_close(q.sum(dim=0), torch.full((prototypes,), batch / prototypes), atol=0.05, rtol=0)
    # ... and ever closer with more iterations
    q = sinkhorn(scores, epsilon=0.5, iterations=50)
    torch.testing.assert_close(q.sum(dim=0), torch.full((prototypes,), batch / prototypes), atol=1e-5, rtol=0)
    # large scores do not overflow (the maximum is subtracted first)
    assert torch.isfinite(sinkhorn(scores * 100, epsilon=0.05, iterations=3)).all()


def test_swav_head_loss_matches_direct_computation():
    torch.manual_seed(0)
    head = build({"type": "SwAVHead", "feat_dim": 4, "num_prototypes": 5, "epsilon": 0.5,
                  "temperature": 0.5, "crops_for_assign": [0, 1], "num_crops": [2, 1]}, "heads")
    x = F.normalize(torch.randn(3 * 3, 4), dim=1)  # 3 images x (2 + 1) crops, crop-major
    loss = head(x)["loss"]
    torch.testing.assert_close(head.prototypes.weight.norm(dim=1), torch.ones(5))
    scores = x @ head.prototypes.weight.T
    crops = [scores[3 * c : 3 * (c + 1)] for c in range(3)]
    expected = 0.0
    for a in (0, 1):
        codes = sinkhorn(crops[a], 0.5, 3)
        others = [v for v in range(3) if v != a]
        expected += sum(-(codes * F.log_softmax(crops[v] / 0.5, dim=1)).sum(dim=1).mean() for v in others) / 2
    torch.testing.assert_close(loss, expected / 2)


def test_swav_head_queue_fills_then_is_used():
    torch.manual_seed(0)
    head = SwAVHead(feat_dim=3, num_prototypes=4, crops_for_assign=[0], num_crops=[2])
    head.queue = torch.zeros(1, 4, 3)  # room for two batches of 2
    first, second, third = (F.normalize(torch.randn(4, 3), dim=1) for _ in range(3))
    head(first)
    torch.testing.assert_close(head.queue[0, :2], first[:2])
    assert not head.use_queue
    head(second)
    torch.testing.assert_close(head.queue[0], torch.cat([second[:2], first[:2]]))
    assert not head.use_queue  # became full only now
    head(third)
    assert head.use_queue
    torch.testing.assert_close(head.queue[0], torch.cat([third[:2], second[:2]]))


def test_swav_head_bad_crop_arguments():
    with pytest.raises(ConfigError, match="crops_for_assign"):
        build({"type": "SwAVHead", "feat_dim": 4, "crops_for_assign": [0, 2], "num_crops": [2]}, "heads")
    with pytest.raises(ValueError, match="do not split"):
        SwAVHead(feat_dim=2, num_prototypes=3, num_crops=[2])(torch.randn(5, 2))


def test_heads_reject_unknown_argument():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        build({"type": "ContrastiveHead", "temperatur": 0.2}, "heads")
