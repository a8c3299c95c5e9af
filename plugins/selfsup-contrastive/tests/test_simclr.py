"""SimCLR: NT-Xent against a hand computation, the negative layout, gradients, config errors,
and one epoch of the shipped Fashion-MNIST config through ``selfsup-run``."""
from __future__ import annotations

import math

import pytest
import torch
from selfsup_models.backbones import ResNet
from selfsup_models.heads import ContrastiveHead
from selfsup_models.necks import NonLinearNeck

from selfsup_contrastive.simclr import SimCLR, nt_xent_logits

FASHION = "simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml"

# Two images a, b; two views each, 3-d embeddings (normalised inside the loss):
#   a1 = [1, 0, 0], b1 = [0, 1, 0], a2 = [1, 1, 0], b2 = [0, 1, 1]
# rows in the order [a1, b1, a2, b2]; cosine similarities (1/sqrt2 = 0.707107):
#         a1      b1      a2      b2
#   a1  1       0       0.7071  0
#   b1  0       1       0.7071  0.7071
#   a2  0.7071  0.7071  1       0.5
#   b2  0       0.7071  0.5     1
# positives: a1-a2, b1-b2 (0.7071 both ways); negatives of a1: b1, b2 = [0, 0];
# of b1: a1, a2 = [0, 0.7071]; of a2: b1, b2 = [0.7071, 0.5]; of b2: a1, a2 = [0, 0.5].
# With T = 0.5, row a1: -log(e^(2*0.7071) / (e^(2*0.7071) + e^0 + e^0)) = 0.396245, and
# b1 0.807866, a2 0.978649, b2 0.643945 -> mean 0.706676.
VIEWS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
HAND_LOSS = 0.706676


def plain_python_nt_xent(rows: list[list[float]], temperature: float) -> float:
    """NT-Xent with the math module only: rows = first views of N images, then their second views."""
    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    z = [unit(v) for v in rows]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        sims = {j: sum(a * b for a, b in zip(z[i], z[j])) / temperature for j in range(n2) if j != i}
        total += -math.log(math.exp(sims[partner]) / sum(math.exp(s) for s in sims.values()))
    return total / n2


def test_nt_xent_matches_hand_computation() -> None:
    z = torch.tensor(VIEWS, dtype=torch.float64)
    pos, neg = nt_xent_logits(z, z)
    assert pos.shape == (4, 1) and neg.shape == (4, 2)
    r = 1 / math.sqrt(2)
    assert pos.squeeze(1).tolist() == pytest.approx([r, r, r, r])
    assert neg.flatten().tolist() == pytest.approx([0, 0, 0, r, r, 0.5, 0, 0.5])
    loss = ContrastiveHead(temperature=0.5)(pos, neg)["loss"].item()
    assert loss == pytest.approx(HAND_LOSS, abs=1e-6)
    assert plain_python_nt_xent(VIEWS, 0.5) == pytest.approx(HAND_LOSS, abs=1e-6)


def test_nt_xent_random_batch_against_plain_python() -> None:
    z = torch.randn(10, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pos, neg = nt_xent_logits(z, z)
    assert neg.shape == (10, 8)
    loss = ContrastiveHead(temperature=0.1)(pos, neg)["loss"].item()
    assert loss == pytest.approx(plain_python_nt_xent(z.tolist(), 0.1), rel=1e-10)


def test_gathered_columns_of_another_rank() -> None:
    """Rank 1 of 2: its rows sit at columns 4..7 of the gathered matrix; the negatives of each
    row are the 6 other columns but itself and its partner, in order."""
    z_all = torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z = z_all[4:]
    pos, neg = nt_xent_logits(z, z_all, rank=1)
    unit = torch.nn.functional.normalize(z_all, dim=1)
    sim = unit @ unit.T
    for i in range(4):
        row, partner = 4 + i, 4 + (i + 2) % 4
        assert pos[i, 0].item() == pytest.approx(sim[row, partner].item())
        others = [sim[row, j].item() for j in range(8) if j not in (row, partner)]
        assert neg[i].tolist() == pytest.approx(others)


def small_simclr() -> SimCLR:
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
    neck = NonLinearNeck(in_channels=32, hid_channels=16, out_channels=8, norm_cfg={"type": "BN"})
    return SimCLR(backbone, neck, ContrastiveHead(temperature=0.1))


def test_forward_train_gives_the_loss_of_its_embeddings_and_gradients() -> None:
    torch.manual_seed(0)
    model = small_simclr()
    views = [torch.randn(3, 1, 12, 12), torch.randn(3, 1, 12, 12)]
    losses = model(views, mode="train")
    assert set(losses) == {"loss"}
    losses["loss"].backward()
    assert model.backbone.conv1.weight.grad is not None and model.backbone.conv1.weight.grad.abs().sum() > 0
    # the same loss recomputed from the embeddings of the concatenated views
    with torch.no_grad():
        z = model.neck(model.backbone(torch.cat(views)))[0]
    assert losses["loss"].item() == pytest.approx(plain_python_nt_xent(z.tolist(), 0.1), rel=1e-4)
    assert model(views[0], mode="extract")[0].shape == (3, 32, 2, 2)


def test_wrong_view_count_is_a_one_line_error() -> None:
    with pytest.raises(ValueError, match="SimCLR: expects 2 views"):
        small_simclr()([torch.randn(2, 1, 12, 12)] * 3, mode="train")


def test_missing_neck_is_refused() -> None:
    backbone = ResNet(depth=18, in_channels=1, base_channels=4, stem_channels=4, stem_type="cifar")
    with pytest.raises(ValueError, match="SimCLR: needs a \\[model.neck\\]"):
        SimCLR(backbone, None, ContrastiveHead())


def test_one_epoch_of_the_fashion_config_lowers_the_loss(run_one_epoch) -> None:
    _, losses = run_one_epoch(FASHION, {"model.neck.in_channels": 64, "optimizer.lr": 1.0,
                                        "lr_config.warmup_iters": 1})
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
