"""NNCLR: the nearest-neighbour lookup on a 2-d support set, the loss against a hand
computation, the FIFO support-set update with its pointer wrap, the whole training step on
identity components, and the shipped Fashion-MNIST config through ``selfsup-run``."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from selfsup_contrastive.nnclr import NNCLR, NNCLRHead, SupportSet, nnclr_loss

FASHION = "nnclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml"

# A 2-d support set of the four axis directions (rows).
AXES = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]


def unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def plain_python_nnclr(anchors: list[list[float]], preds: list[list[float]], t: float) -> float:
    """Mean over i of -log softmax_k(a_i . p_k / t)[i], vectors normalised (math module only)."""
    total = 0.0
    for i, a in enumerate(anchors):
        logits = [sum(x * y for x, y in zip(unit(a), unit(p))) / t for p in preds]
        total += -math.log(math.exp(logits[i]) / sum(math.exp(x) for x in logits))
    return total / len(anchors)


def axes_support_set() -> SupportSet:
    support = SupportSet(4, 2)
    support.queue.copy_(torch.tensor(AXES))
    return support


def test_nearest_neighbour_is_the_closest_support_vector_by_cosine() -> None:
    support = axes_support_set()
    # [0.9, 0.1] -> +x; [0.2, 0.7] -> +y; [-3, 2.9] -> -x (cosine, not distance); [0.1, -5] -> -y
    z = torch.tensor([[0.9, 0.1], [0.2, 0.7], [-3.0, 2.9], [0.1, -5.0]], requires_grad=True)
    nn_z = support.nearest(z)
    assert nn_z.tolist() == [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    assert not nn_z.requires_grad                      # the neighbour carries no gradient


def test_loss_matches_hand_computation() -> None:
    # anchors +x, +y; predictions [0.6, 0.8], [1, 0]; T = 0.5:
    # row 1: logits [1.2, 2.0], label 0 -> log(1 + e^0.8) = 1.171101
    # row 2: logits [1.6, 0.0], label 1 -> log(1 + e^1.6) = 1.783901; mean 1.477501
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    preds = torch.tensor([[0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    loss = nnclr_loss(anchors, preds, 0.5)
    assert loss.item() == pytest.approx(1.477501, abs=1e-6)
    assert plain_python_nnclr(anchors.tolist(), preds.tolist(), 0.5) == pytest.approx(1.477501, abs=1e-6)
    # another process's rows: rank 1 of 2 scores its 2 anchors against 4 gathered predictions
    gathered = torch.cat([torch.tensor([[0.0, -1.0], [-1.0, 0.0]], dtype=torch.float64), preds])
    expected = (math.log(math.exp(1.2) + math.exp(2.0) + math.exp(0.0) + math.exp(-2.0)) - 1.2
                + math.log(math.exp(1.6) + math.exp(0.0) + math.exp(-2.0) + math.exp(0.0)) - 0.0) / 2
    assert nnclr_loss(anchors, gathered, 0.5, rank=1).item() == pytest.approx(expected, abs=1e-9)


def test_support_set_is_a_fifo_whose_pointer_wraps() -> None:
    support = SupportSet(5, 2)
    first = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    support.enqueue(first)
    assert support.ptr.item() == 3
    assert torch.allclose(support.queue[:3], torch.tensor([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]))
    second = torch.tensor([[0.0, -7.0], [5.0, 0.0], [-0.6, -0.8]])
    support.enqueue(second)
    assert support.ptr.item() == 1                     # 3 + 3 = 6 -> 6 mod 5
    assert torch.allclose(support.queue, torch.tensor(
        [[-0.6, -0.8], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="raise model.queue_len"):
        support.enqueue(torch.ones(6, 2))


class _Flatten(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.flatten(1),)


class _ListIdentity(nn.Module):
    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x[0] if isinstance(x, (list, tuple)) else x]


def test_training_step_is_the_symmetric_loss_then_enqueues_view_1() -> None:
    """Identity backbone, projector and predictor: z = the 2-d input, so the whole step is
    computable by hand with the support set of the four axes."""
    model = NNCLR(_Flatten(), _ListIdentity(), NNCLRHead(_ListIdentity(), temperature=0.5), queue_len=4, feat_dim=2)
    model.support_set.queue.copy_(torch.tensor(AXES))
    z1 = [[0.9, 0.1], [0.2, 0.7]]                          # neighbours +x, +y
    z2 = [[0.6, 0.8], [1.0, 0.0]]                          # neighbours +y, +x
    view_1 = torch.tensor(z1, dtype=torch.float64).view(2, 1, 1, 2)
    view_2 = torch.tensor(z2, dtype=torch.float64).view(2, 1, 1, 2)
    loss = model(img=[view_1, view_2], mode="train")["loss"]
    expected = 0.5 * (plain_python_nnclr([[1, 0], [0, 1]], z2, 0.5) + plain_python_nnclr([[0, 1], [1, 0]], z1, 0.5))
    assert loss.item() == pytest.approx(expected, abs=1e-9)
    assert model.support_set.ptr.item() == 2
    assert torch.allclose(model.support_set.queue[:2], torch.tensor([unit(z1[0]), unit(z1[1])]))
    assert model.support_set.queue[2:].tolist() == [[-1.0, 0.0], [0.0, -1.0]]


def test_feat_dim_must_match_the_projector() -> None:
    model = NNCLR(_Flatten(), _ListIdentity(), NNCLRHead(_ListIdentity()), queue_len=4, feat_dim=3)
    with pytest.raises(ValueError, match="feat_dim"):
        model(img=[torch.ones(2, 1, 1, 2), torch.ones(2, 1, 1, 2)], mode="train")
    with pytest.raises(ValueError, match="gives 4-d projections but model.feat_dim = 3"):
        NNCLR(_Flatten(), nn.Sequential(nn.Linear(2, 4)), NNCLRHead(_ListIdentity()), queue_len=4, feat_dim=3)


def test_one_epoch_of_the_fashion_config(run_one_epoch) -> None:
    work_dir, losses = run_one_epoch(FASHION, {
        "model.neck.in_channels": 64, "model.neck.hid_channels": 64, "model.queue_len": 96,
        "model.head.predictor.hid_channels": 64, "lr_config.warmup_iters": 1, "data.samples_per_gpu": 64})
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    state = torch.load(work_dir / "latest.pth", map_location="cpu", weights_only=False)["state_dict"]
    assert state["support_set.ptr"].item() == 256 % 96         # 4 steps of 64 view-1 projections
    assert torch.allclose(state["support_set.queue"].norm(dim=1), torch.ones(96))


def test_selfsup_run_list_shows_nnclr_and_its_head(capsys) -> None:
    from selfsup_core.cli import main

    assert main(["list", "--json"]) == 0
    kinds = json.loads(capsys.readouterr().out)["kinds"]
    assert {r["name"]: r["dist"] for r in kinds["algorithms"]}["NNCLR"] == "selfsup-contrastive"
    assert {r["name"]: r["dist"] for r in kinds["heads"]}["NNCLRHead"] == "selfsup-contrastive"
