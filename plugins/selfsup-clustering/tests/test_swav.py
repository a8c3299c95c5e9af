"""SwAV: the algorithm's multi-crop wiring, Sinkhorn sums, the SwAVHook queue (start, size,
checkpoint round trip) and frozen prototypes, and one epoch through selfsup-run."""
from __future__ import annotations

import math

import pytest
import torch
from selfsup_core.errors import SelfSupError
from selfsup_models.backbones.resnet import ResNet
from selfsup_models.heads.swav import SwAVHead, sinkhorn
from selfsup_models.necks import SwAVNeck
from torch import nn

from selfsup_clustering.swav import SwAV, SwAVHook
from selfsup_models.algorithm import resolution_groups

FASHION = "swav_resnet18_1xb256-mcrop-2-4-coslr-200e_fashion-mnist.toml"


def tiny_swav(num_crops=(2, 2), prototypes: int = 6, feat_dim: int = 4) -> SwAV:
    torch.manual_seed(0)
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar",
                      norm_cfg={"type": "BN"})
    neck = SwAVNeck(in_channels=32, hid_channels=8, out_channels=feat_dim, norm_cfg={"type": "BN"})
    head = SwAVHead(feat_dim=feat_dim, num_prototypes=prototypes, num_crops=list(num_crops))
    return SwAV(backbone, neck, head)


def crops(batch: int = 4, num_crops=(2, 2), sizes=(12, 8)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, 1, size, size, generator=generator)
            for count, size in zip(num_crops, sizes) for _ in range(count)]


# -- the algorithm ---------------------------------------------------------------------------------
def test_resolution_groups_split_runs_of_equal_size() -> None:
    views = [torch.zeros(1, 1, s, s) for s in (224, 224, 96, 96, 96)]
    assert resolution_groups(views) == [(0, 2), (2, 5)]
    assert resolution_groups(views[:2]) == [(0, 2)]


def test_forward_train_runs_the_backbone_once_per_resolution_and_matches_the_components() -> None:
    model = tiny_swav()
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    img = crops()
    loss = model(img, mode="train")["loss"]
    assert calls == [8, 8]  # 2 crops x 4 images per resolution group
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None and torch.isfinite(loss)
    # the same loss from the components by hand (BN in train mode sees the same batches)
    with torch.no_grad():
        feats = [model.backbone(torch.cat(img[:2])), model.backbone(torch.cat(img[2:]))]
        expected = model.head(model.neck(feats)[0])["loss"]
    assert torch.allclose(loss, expected)


def test_view_count_must_match_the_head() -> None:
    with pytest.raises(ValueError, match=r"num_crops = \[2, 2\] adds up to 4"):
        tiny_swav()(crops(num_crops=(2, 1)), mode="train")


# -- Sinkhorn ------------------------------------------------------------------------------------
def test_sinkhorn_matches_a_hand_computation() -> None:
    # scores / epsilon = [[0, ln 3], [0, 0]]: exp -> sample 0 [1, 3], sample 1 [1, 1]
    # Q (prototypes x samples) = [[1, 1], [3, 1]] / 6
    # prototype sums 2/6, 4/6 -> divide, / K=2: [[1/4, 1/4], [3/8, 1/8]]
    # sample sums 5/8, 3/8 -> divide, / B=2: sample 0 [1/5, 3/10], sample 1 [1/3, 1/6]; x B=2
    scores = torch.tensor([[0.0, 0.5 * math.log(3.0)], [0.0, 0.0]])
    q = sinkhorn(scores, epsilon=0.5, iterations=1)
    assert torch.allclose(q, torch.tensor([[0.4, 0.6], [2 / 3, 1 / 3]]), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_columns_to_batch_over_prototypes() -> None:
    scores = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    q = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)  # each sample's code sums to 1
    q = sinkhorn(scores, epsilon=0.5, iterations=200)
    assert torch.allclose(q.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-3)  # equipartition: B / K


# -- SwAVHook: queue -------------------------------------------------------------------------------
def test_queue_length_is_rounded_and_starts_at_its_epoch(make_runner) -> None:
    model = tiny_swav()
    hook = SwAVHook(epoch_queue_starts=1, queue_length=10)
    runner = make_runner(model)  # samples_per_gpu = 4
    hook.selfsup_before_run(runner)
    assert hook.queue_length == 8 and hook.crops_for_assign == [0, 1] and hook.feat_dim == 4
    hook.selfsup_before_epoch(runner)
    assert model.head.queue is None
    runner.epoch = 1
    hook.selfsup_before_epoch(runner)
    assert model.head.queue.shape == (2, 8, 4) and not model.head.queue.any() and model.head.use_queue is False


def test_queue_fills_front_first_and_is_used_once_full(make_runner) -> None:
    model = tiny_swav()
    hook = SwAVHook(epoch_queue_starts=0, queue_length=8)
    runner = make_runner(model)
    hook.selfsup_before_run(runner)
    hook.selfsup_before_epoch(runner)
    model(crops(), mode="train")
    assert model.head.queue[:, :4].abs().sum() > 0 and not model.head.queue[:, 4:].any()
    assert model.head.use_queue is False
    first = model.head.queue[:, :4].clone()
    model(crops(), mode="train")
    assert torch.equal(model.head.queue[:, 4:], first)  # the older batch moved back
    model(crops(), mode="train")
    assert model.head.use_queue is True


def test_queue_survives_a_checkpoint_round_trip(make_runner) -> None:
    model = tiny_swav()
    hook = SwAVHook(epoch_queue_starts=0, queue_length=8)
    runner = make_runner(model)
    hook.selfsup_before_run(runner)
    hook.selfsup_before_epoch(runner)
    for _ in range(3):
        model(crops(), mode="train")
    state = hook.state_dict()
    assert state["queue"].shape == (1, 2, 8, 4) and state["use_queue"] is True
    buffer = __import__("io").BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)

    fresh_model = tiny_swav()
    fresh = SwAVHook(epoch_queue_starts=0, queue_length=8)
    fresh.load_state_dict(loaded)
    fresh.selfsup_before_run(make_runner(fresh_model))
    assert torch.equal(fresh_model.head.queue, model.head.queue)
    assert fresh_model.head.use_queue is True


def test_queue_from_two_processes_is_re_split_for_one(make_runner) -> None:
    saved = torch.arange(2 * 2 * 4 * 3, dtype=torch.float32).reshape(2, 2, 4, 3)  # 2 ranks x 4 rows
    model = tiny_swav(feat_dim=3)
    hook = SwAVHook(epoch_queue_starts=0, queue_length=8)
    hook.load_state_dict({"queue": saved, "use_queue": True})
    hook.selfsup_before_run(make_runner(model))
    assert model.head.queue.shape == (2, 8, 3)
    assert torch.equal(model.head.queue[0], torch.cat([saved[0, 0], saved[1, 0]]))


def test_hook_config_errors(make_runner) -> None:
    with pytest.raises(ValueError, match="queue_length must be >= 0"):
        SwAVHook(queue_length=-1)
    with pytest.raises(ValueError, match="frozen_layers_cfg"):
        SwAVHook(frozen_layers_cfg={"prototypes": -3})
    with pytest.raises(SelfSupError, match="shorter than one global batch"):
        SwAVHook(queue_length=3).selfsup_before_run(make_runner(tiny_swav()))
    with pytest.raises(SelfSupError, match="feat_dim = 7"):
        SwAVHook(feat_dim=7).selfsup_before_run(make_runner(tiny_swav()))
    with pytest.raises(SelfSupError, match="no SwAVHead"):
        SwAVHook().selfsup_before_run(make_runner(nn.Linear(2, 2)))
    with pytest.raises(SelfSupError, match="no trainable parameter"):
        SwAVHook(frozen_layers_cfg={"protos": 3}).selfsup_before_run(make_runner(tiny_swav()))


# -- SwAVHook: frozen prototypes -----------------------------------------------------------------
def test_prototypes_stay_frozen_for_the_configured_iterations(make_runner) -> None:
    model = tiny_swav()
    hook = SwAVHook(frozen_layers_cfg={"prototypes": 2})
    runner = make_runner(model)
    hook.selfsup_before_run(runner)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)

    def step(iteration: int) -> None:
        runner.iter = iteration
        optimizer.zero_grad()
        model(crops(), mode="train")["loss"].backward()
        hook.selfsup_after_backward(runner)
        optimizer.step()

    model.head.normalize_prototypes()
    start = model.head.prototypes.weight.detach().clone()
    backbone_start = model.backbone.conv1.weight.detach().clone()
    for iteration in range(2):
        step(iteration)
        assert not model.head.prototypes.weight.grad.any()
    model.head.normalize_prototypes()
    assert torch.allclose(model.head.prototypes.weight, start, atol=1e-6)  # same directions
    assert not torch.equal(model.backbone.conv1.weight, backbone_start)
    step(2)
    assert model.head.prototypes.weight.grad.abs().sum() > 0
    model.head.normalize_prototypes()
    assert not torch.allclose(model.head.prototypes.weight, start, atol=1e-6)


# -- end to end ----------------------------------------------------------------------------------
def test_one_epoch_of_the_fashion_config_lowers_the_loss_and_saves_the_queue(run_config, small_values) -> None:
    # 2 + 2 crops instead of 2 + 4 to keep it short; a queue that fills but is not full in 8
    # iterations (so it is saved, and the loss is SwAV's batch loss throughout)
    values = small_values(**{
        "model.neck.in_channels": 64, "model.head.num_prototypes": 20, "optimizer.lr": 0.6,
        "data.train.num_views": [2, 2], "model.head.num_crops": [2, 2],
        "hooks.0.epoch_queue_starts": 0, "hooks.0.queue_length": 512, "hooks.0.frozen_layers_cfg.prototypes": 2})
    work_dir, losses = run_config(FASHION, values)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    state = torch.load(work_dir / "latest.pth", weights_only=True)
    (queue_state,) = [v for k, v in state["hooks"].items() if k.endswith("SwAVHook")]
    queue = queue_state["queue"]
    assert queue.shape == (1, 2, 512, 128)
    assert queue[0, :, :256].abs().sum(dim=-1).gt(0).all() and not queue[0, :, 256:].any()  # 8 x 32 pushed
