"""MoCo v1/v2: the loss against a hand computation, exact queue pointer arithmetic, the EMA key
encoder, split BN, config errors, and the shipped Fashion-MNIST configs through ``selfsup-run``
(one epoch, then ``--resume`` restoring the queue from the checkpoint)."""
from __future__ import annotations

import math

import pytest
import torch
from selfsup_core.engine import checkpoint
from selfsup_models.backbones import ResNet
from selfsup_models.heads import ContrastiveHead
from selfsup_models.necks import LinearNeck, MoCoV2Neck

from selfsup_contrastive.moco import MoCo, moco_logits

V1_FASHION = "mocov1_resnet18_1xb256-steplr-200e_fashion-mnist.toml"
V2_FASHION = "mocov2_resnet18_1xb256-coslr-200e_fashion-mnist.toml"

# Two queries, their keys and a queue of three earlier keys (columns), 2-d unit vectors:
#   q1 = [1, 0], k1 = [0.6, 0.8]; q2 = [0, 1], k2 = [0.8, 0.6]; queue = [0, 1], [1, 0], [-1, 0]
# pos: q1.k1 = 0.6, q2.k2 = 0.6; neg: q1 -> [0, 1, -1], q2 -> [1, 0, 0].
# T = 0.5: loss_1 = -log(e^1.2 / (e^1.2 + e^0 + e^2 + e^-2)) = 1.271864,
#          loss_2 = -log(e^1.2 / (e^1.2 + e^2 + e^0 + e^0)) = 1.342324; mean 1.307094.
Q = [[1.0, 0.0], [0.0, 1.0]]
K = [[0.6, 0.8], [0.8, 0.6]]
QUEUE_COLUMNS = [[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]
HAND_LOSS = 1.307094


def plain_python_moco(q: list[list[float]], k: list[list[float]], queue: list[list[float]], t: float) -> float:
    """InfoNCE of each query against its key and the queued keys (math module only)."""
    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    total = 0.0
    for qi, ki in zip(q, k):
        logits = [dot(qi, ki) / t] + [dot(qi, c) / t for c in queue]
        total += -math.log(math.exp(logits[0]) / sum(math.exp(x) for x in logits))
    return total / len(q)


def test_moco_loss_matches_hand_computation() -> None:
    queue = torch.tensor(QUEUE_COLUMNS, dtype=torch.float64).T          # (C, K)
    pos, neg = moco_logits(torch.tensor(Q, dtype=torch.float64), torch.tensor(K, dtype=torch.float64), queue)
    assert pos.flatten().tolist() == pytest.approx([0.6, 0.6])
    assert neg.flatten().tolist() == pytest.approx([0, 1, -1, 1, 0, 0])
    assert ContrastiveHead(temperature=0.5)(pos, neg)["loss"].item() == pytest.approx(HAND_LOSS, abs=1e-6)
    assert plain_python_moco(Q, K, QUEUE_COLUMNS, 0.5) == pytest.approx(HAND_LOSS, abs=1e-6)


def small_moco(v2: bool = True, **kwargs) -> MoCo:
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
    neck = MoCoV2Neck(32, 16, 8) if v2 else LinearNeck(32, 8)
    kwargs = {"queue_len": 12, "feat_dim": 8, "momentum": 0.9, **kwargs}
    return MoCo(backbone, neck, ContrastiveHead(temperature=0.2), **kwargs)


def views(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, 12, 12, generator=g), torch.randn(n, 1, 12, 12, generator=g)]


@pytest.mark.parametrize("v2", [False, True])
def test_forward_train_loss_uses_query_key_and_the_queue_before_the_step(v2: bool) -> None:
    torch.manual_seed(0)
    model = small_moco(v2)
    im_q, im_k = views()
    queue_before = model.queue.clone()
    key_encoder = [p.clone() for p in model.encoder_k.parameters()]
    online = [p.clone() for p in model.encoder_q().parameters()]
    loss = model([im_q, im_k], mode="train")["loss"]
    # independent recomputation: the key encoder after its EMA step, BN in training mode
    with torch.no_grad():
        q = torch.nn.functional.normalize(model.neck(model.backbone(im_q))[0], dim=1)
        k = torch.nn.functional.normalize(model.encoder_k(im_k)[0], dim=1)
    expected = plain_python_moco(q.tolist(), k.tolist(), queue_before.T.tolist(), 0.2)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # EMA rule: key = 0.9 key + 0.1 query, applied once
    for after, before, query in zip(model.encoder_k.parameters(), key_encoder, online):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * query)
    # the batch's keys were enqueued at columns 0..3
    torch.testing.assert_close(model.queue[:, :4], k.T)
    torch.testing.assert_close(model.queue[:, 4:], queue_before[:, 4:])


def test_key_encoder_gets_no_gradient_and_follows_the_ema_rule_after_a_step() -> None:
    torch.manual_seed(0)
    model = small_moco()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(views(seed=1), mode="train")["loss"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.encoder_k.parameters())
    assert model.backbone.conv1.weight.grad.abs().sum() > 0
    opt.step()
    key_before = [p.clone() for p in model.encoder_k.parameters()]
    online = [p.detach().clone() for p in model.encoder_q().parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(key_before, online))  # the step moved the query encoder
    model(views(seed=2), mode="train")
    for after, before, query in zip(model.encoder_k.parameters(), key_before, online):
        torch.testing.assert_close(after, 0.9 * before + 0.1 * query)


def test_key_encoder_starts_as_a_copy_of_the_query_encoder() -> None:
    model = small_moco(init_cfg={"type": "Normal", "layer": "Linear", "std": 0.5})
    for key, query in zip(model.encoder_k.parameters(), model.encoder_q().parameters()):
        assert torch.equal(key, query)
    assert "queue" in model.state_dict() and "queue_ptr" in model.state_dict()
    torch.testing.assert_close(model.queue.norm(dim=0), torch.ones(12))


def test_queue_pointer_arithmetic_and_contents() -> None:
    """queue_len 5, batches of 2: columns 0-1, 2-3, then 4 and (wrapping) 0; pointer 2, 4, 1."""
    model = MoCo(torch.nn.Identity(), torch.nn.Identity(), ContrastiveHead(), queue_len=5, feat_dim=3)
    initial = model.queue.clone()
    batches = [torch.arange(6, dtype=torch.float32).view(2, 3) + 10 * b for b in range(3)]
    pointers = []
    for keys in batches:
        model.dequeue_and_enqueue(keys)
        pointers.append(int(model.queue_ptr))
    assert pointers == [2, 4, 1]
    expected = torch.stack([batches[2][1], batches[0][1], batches[1][0], batches[1][1], batches[2][0]], dim=1)
    torch.testing.assert_close(model.queue, expected)
    assert not torch.equal(model.queue[:, 1], initial[:, 1])
    with pytest.raises(ValueError, match="exceeds queue_len=5; raise model.queue_len"):
        model.dequeue_and_enqueue(torch.zeros(6, 3))


def test_split_bn_encodes_shuffled_chunks_with_their_own_statistics() -> None:
    torch.manual_seed(0)
    model = small_moco(bn_splits=2)
    im_k = views(6)[1]
    torch.manual_seed(3)
    keys = model.encode_keys(im_k)
    torch.manual_seed(3)
    perm = torch.randperm(6)
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for chunk in perm.chunk(2):
            expected[chunk] = torch.nn.functional.normalize(model.encoder_k(im_k[chunk])[0], dim=1)
        whole_batch = torch.nn.functional.normalize(model.encoder_k(im_k)[0], dim=1)
    torch.testing.assert_close(keys, expected)
    assert not torch.allclose(keys, whole_batch, atol=1e-4)   # other BN statistics than one batch
    model.bn_splits = 1
    torch.testing.assert_close(model.encode_keys(im_k), whole_batch)


@pytest.mark.parametrize("kwargs, message", [
    ({"queue_len": 0}, "queue_len and feat_dim must be >= 1"),
    ({"momentum": 1.5}, "momentum must be in \\[0, 1\\]"),
    ({"bn_splits": 0}, "bn_splits must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="MoCo: " + message):
        small_moco(**kwargs)


def test_mocov2_one_epoch_lowers_the_loss(run_one_epoch) -> None:
    # a queue of one batch (32 keys) is full of real keys from the second iteration on; the loss
    # of a queue of random unit vectors (iteration 1) is not comparable, so it is left out
    _, losses = run_one_epoch(V2_FASHION, {"model.neck.in_channels": 64, "model.queue_len": 32,
                                           "model.bn_splits": 2})
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[1:4]) / 3, losses


def test_mocov1_one_epoch_then_resume_restores_the_queue(run_one_epoch) -> None:
    # 8 iterations x 32 keys per epoch; queue_len 384: after epoch 1 the pointer is 256, after a
    # resumed epoch 2 it is 512 % 384 = 128 and columns 128..255 still hold epoch 1's keys (a
    # fresh queue would end with the pointer at 256 and those columns overwritten)
    values = {"model.neck.in_channels": 64, "model.queue_len": 384, "model.bn_splits": 2}
    work_dir, losses = run_one_epoch(V1_FASHION, values)
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    first = checkpoint.load(work_dir / "latest.pth")["state_dict"]
    assert int(first["queue_ptr"]) == 256
    work_dir, _ = run_one_epoch(V1_FASHION, values, "--resume", "--resume-with-changes",
                                 "--cfg-options", "runner.max_epochs=2")
    second = checkpoint.load(work_dir / "latest.pth")["state_dict"]
    assert int(second["queue_ptr"]) == 128
    torch.testing.assert_close(second["queue"][:, 128:256], first["queue"][:, 128:256])
    assert not torch.equal(second["queue"][:, :128], first["queue"][:, :128])
