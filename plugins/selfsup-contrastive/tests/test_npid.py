"""NPID: loss against a hand computation, negative sampling, memory-bank state (exact values,
checkpoint round trip), config errors, and one short run through ``selfsup-run``."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from selfsup_contrastive.npid import NPID, bank_logits, draw_negatives
from selfsup_core.testing import assert_validated_from_config, derive_config, read_metrics, run_selfsup
from selfsup_models.heads.contrastive import ContrastiveHead
from selfsup_models.memories.simple import SimpleMemory

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
FASHION = CONFIGS / "npid_resnet18_1xb256-steplr-200e_fashion-mnist.toml"


class Flatten(nn.Module):
    """A 'backbone' returning its input rows as the feature (so the features are the images)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.flatten(1),)


class FirstOf(nn.Module):
    """A 'neck' passing the backbone's only output on."""

    def forward(self, x: tuple[torch.Tensor]) -> list[torch.Tensor]:
        return [x[0]]


def tiny_npid(bank: list[list[float]], temperature: float, neg_num: int, ensure_neg: bool,
              momentum: float = 0.5, dtype: torch.dtype = torch.float32) -> NPID:
    memory = SimpleMemory(length=len(bank), feat_dim=len(bank[0]), momentum=momentum).to(dtype)
    memory.feature_bank.copy_(torch.tensor(bank, dtype=dtype))
    return NPID(Flatten(), FirstOf(), ContrastiveHead(temperature=temperature), memory, neg_num=neg_num,
                ensure_neg=ensure_neg)


# -- the loss and the bank update against a hand computation -----------------------------------
# bank b0 = (1, 0), b1 = (0, 1); a batch of two images with dataset indices 0 and 1:
#   f0 = normalize(3, 4) = (0.6, 0.8),  f1 = normalize(-3, 4) = (-0.6, 0.8).
# Length 2 with ensure_neg: every negative of sample 0 is index 1 and vice versa (neg_num = 2).
#   sample 0: pos = <b0, f0> = 0.6, negs = <b1, f0> = 0.8, 0.8
#   sample 1: pos = <b1, f1> = 0.8, negs = <b0, f1> = -0.6, -0.6
# T = 0.5: loss_i = -log(e^(pos/T) / (e^(pos/T) + 2 e^(neg/T))) = log(1 + 2 e^((neg - pos)/T))
#   loss_0 = log(1 + 2 e^0.4),  loss_1 = log(1 + 2 e^-2.8);  loss = their mean
# Bank update (momentum 0.5, read before the update):
#   b0 <- normalize(0.5 (1, 0) + 0.5 (0.6, 0.8)) = normalize(0.8, 0.4) = (2, 1) / sqrt(5)
#   b1 <- normalize(0.5 (0, 1) + 0.5 (-0.6, 0.8)) = normalize(-0.3, 0.9) = (-1, 3) / sqrt(10)
HAND_LOSS = (math.log(1 + 2 * math.exp(0.4)) + math.log(1 + 2 * math.exp(-2.8))) / 2
HAND_BANK = [[2 / math.sqrt(5), 1 / math.sqrt(5)], [-1 / math.sqrt(10), 3 / math.sqrt(10)]]


def test_npid_loss_and_bank_update_match_hand_computation() -> None:
    model = tiny_npid([[1.0, 0.0], [0.0, 1.0]], temperature=0.5, neg_num=2, ensure_neg=True)
    img = torch.tensor([[3.0, 4.0], [-3.0, 4.0]], requires_grad=True)
    losses = model(img, mode="train", idx=torch.tensor([0, 1]), label=torch.tensor([5, 7]))
    assert set(losses) == {"loss"}
    assert losses["loss"].item() == pytest.approx(HAND_LOSS, rel=1e-6)
    assert torch.allclose(model.memory_bank.feature_bank, torch.tensor(HAND_BANK), atol=1e-7)
    losses["loss"].backward()  # the bank was updated in place after the loss: backward still works
    assert img.grad is not None and torch.isfinite(img.grad).all()
    assert not model.memory_bank.feature_bank.requires_grad


def plain_npid_loss(feats: list[list[float]], bank: list[list[float]], idx: list[int], negs: list[list[int]],
                    temperature: float) -> float:
    """NPID's loss with loops and the math module only: normalise, dot products, softmax CE."""
    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for f, i, row in zip(feats, idx, negs):
        f = unit(f)
        logits = [dot(bank[i], f) / temperature] + [dot(bank[j], f) / temperature for j in row]
        total += -logits[0] + math.log(sum(math.exp(z) for z in logits))
    return total / len(feats)


@pytest.mark.parametrize("length", [5, 40])  # 5: gathers the negative rows; 40: scores the whole bank
def test_npid_loss_matches_plain_python_with_drawn_negatives(length: int) -> None:
    gen = torch.Generator().manual_seed(1)
    bank = torch.nn.functional.normalize(torch.randn(length, 2, generator=gen, dtype=torch.float64), dim=1)
    feats = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    idx = torch.tensor([4, 0, 2])
    model = tiny_npid(bank.tolist(), temperature=0.2, neg_num=3, ensure_neg=False, dtype=torch.float64)
    torch.manual_seed(123)
    negs = draw_negatives(idx, length, 3, False)  # the draws forward_train will make
    torch.manual_seed(123)
    loss = model(feats, mode="train", idx=idx)["loss"].item()
    assert loss == pytest.approx(plain_npid_loss(feats.tolist(), bank.tolist(), idx.tolist(), negs.tolist(), 0.2),
                                 rel=1e-10)


def test_bank_logits_two_ways_agree() -> None:
    gen = torch.Generator().manual_seed(0)
    feat = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    bank = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    idx = torch.tensor([1, 7, 49, 0])
    few = torch.randint(50, (4, 2), generator=gen)     # 4*2*3 = 24 <= 4*50 + 150: gathers rows
    many = torch.randint(50, (4, 100), generator=gen)  # 4*100*3 = 1200 > 350: whole-bank scores
    for neg_idx in (few, many):
        pos, neg = bank_logits(feat, bank, idx, neg_idx)
        assert torch.allclose(pos.squeeze(1), (bank[idx] * feat).sum(1))
        assert torch.allclose(neg, torch.einsum("nkd,nd->nk", bank[neg_idx], feat))


# -- negatives -----------------------------------------------------------------------------------
def test_draw_negatives_range_and_ensure_neg() -> None:
    torch.manual_seed(0)
    idx = torch.tensor([0, 1, 2, 2])
    plain = draw_negatives(idx, 3, 3000, False)
    assert plain.shape == (4, 3000) and plain.min() == 0 and plain.max() == 2
    assert (plain == idx.view(-1, 1)).any()  # without ensure_neg a sample's own index turns up
    ensured = draw_negatives(idx, 3, 3000, True)
    assert ensured.min() >= 0 and ensured.max() <= 2
    assert not (ensured == idx.view(-1, 1)).any()
    # uniform over the other indices: each of the two others about half the time
    share = (ensured[0] == 1).double().mean().item()
    assert 0.45 < share < 0.55


# -- memory bank state ------------------------------------------------------------------------
def test_bank_rows_stay_unit_norm_and_only_the_batch_rows_change() -> None:
    torch.manual_seed(0)
    model = tiny_npid(torch.nn.functional.normalize(torch.randn(10, 4), dim=1).tolist(), 0.07, 5, True)
    before = model.memory_bank.feature_bank.clone()
    model(torch.randn(3, 4), mode="train", idx=torch.tensor([2, 5, 9]))
    after = model.memory_bank.feature_bank
    changed = (after != before).any(dim=1).nonzero().flatten().tolist()
    assert changed == [2, 5, 9]
    assert torch.allclose(after.norm(dim=1), torch.ones(10))


def test_bank_survives_a_checkpoint_round_trip() -> None:
    torch.manual_seed(0)
    model = tiny_npid(torch.nn.functional.normalize(torch.randn(6, 2), dim=1).tolist(), 0.07, 4, False)
    model(torch.randn(4, 2), mode="train", idx=torch.tensor([0, 1, 3, 5]))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert "memory_bank.feature_bank" in state
    fresh = tiny_npid([[1.0, 0.0]] * 6, 0.07, 4, False)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.memory_bank.feature_bank, model.memory_bank.feature_bank)


# -- errors and config validation ---------------------------------------------------------------
def test_npid_errors() -> None:
    with pytest.raises(ValueError, match="neg_num must be a positive integer"):
        tiny_npid([[1.0, 0.0], [0.0, 1.0]], 0.1, 0, False)
    with pytest.raises(ValueError, match="memory_bank must be a SimpleMemory"):
        NPID(Flatten(), FirstOf(), ContrastiveHead(), nn.Identity())
    model = tiny_npid([[1.0, 0.0], [0.0, 1.0]], 0.1, 1, False)
    with pytest.raises(ValueError, match="needs the samples' dataset indices"):
        model(torch.ones(2, 2), mode="train")
    with pytest.raises(ValueError, match="expects 1 views"):
        model([torch.ones(2, 2), torch.ones(2, 2)], mode="train", idx=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"index 2 does not fit memory_bank.length = 2"):
        model(torch.ones(2, 2), mode="train", idx=torch.tensor([0, 2]))


def test_npid_validated_from_config() -> None:
    assert_validated_from_config("algorithms", "NPID")


# -- end to end ------------------------------------------------------------------------------
def test_npid_trains_through_selfsup_run(tmp_path: Path) -> None:
    """The shipped Fashion-MNIST config on 64 real images (narrow ResNet-18, batch 32), 4 epochs.

    NPID's positive for a sample is its bank entry from the previous epoch, so in the first
    epoch every positive is still a random unit vector and the loss cannot fall yet (it rises
    while the bank fills with the untrained, similar features); the check is that it falls
    once the bank holds real features: the last epoch's mean below the first's and second's.
    """
    from selfsup_data.testing import fashion_mnist_npz

    fashion_mnist_npz(tmp_path / "fm.npz", 64)
    source = {"type": "NumpyArrays", "file": str(tmp_path / "fm.npz")}
    config = derive_config(
        FASHION, tmp_path / "npid.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 4, "data.samples_per_gpu": 32, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.interval": 0, "model.backbone.base_channels": 8,
                "model.backbone.stem_channels": 8, "model.neck.in_channels": 64, "model.memory_bank.length": 64,
                "model.neg_num": 64})
    work_dir = tmp_path / "work"
    result = run_selfsup(config, "--work-dir", work_dir, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert (work_dir / "latest.pth").exists()
    epochs = {r["epoch"]: r["loss"] for r in read_metrics(work_dir, "train_epoch")}
    assert sorted(epochs) == [1, 2, 3, 4]
    assert epochs[4] < epochs[2] < epochs[1], epochs
    state = torch.load(work_dir / "latest.pth", weights_only=True, map_location="cpu")
    bank = next(v for k, v in state["state_dict"].items() if k.endswith("memory_bank.feature_bank"))
    assert bank.shape == (64, 128)
    assert torch.allclose(bank.norm(dim=1), torch.ones(64), atol=1e-5)
