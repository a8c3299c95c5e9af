"""InterCLR: each negative sampling mode's picks on a hand-made bank, the margins and the
inter-image loss against hand computations, the memory's updates, the forward step, bad
options as one-line config errors, and the Fashion-MNIST config through ``selfsup-run``
(2 iterations, the hook clustering before the first and updating after each)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from selfsup_core.cli import main
from selfsup_core.testing import assert_validated_from_config, derive_config, read_metrics
from selfsup_models.backbones import ResNet
from selfsup_models.heads import ContrastiveHead
from selfsup_models.memories import InterCLRMemory
from selfsup_models.necks import MoCoV2Neck

from selfsup_contrastive.interclr import InterCLRMoCo, apply_margins, arc_margin, cos_margin
from selfsup_contrastive.interclr_hook import InterCLRHook
from selfsup_contrastive.moco import moco_logits
from selfsup_contrastive.interclr_sampling import (cluster_layout, hard_negatives, pool_negatives, random_negatives,
                                                   sample_positives)

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
FASHION = "interclr-moco_resnet18_1xb256-coslr-200e_fashion-mnist.toml"

# A bank of 8 samples in 3 clusters; sorted stably by label: cluster 0 = [1, 3, 6],
# cluster 1 = [2, 5], cluster 2 = [0, 4, 7].
LABELS = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2])
# similarity of one query to bank entries 0..7, decreasing with the index
SIMILARITY = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]])


def test_cluster_layout() -> None:
    order, starts, counts = cluster_layout(LABELS, 3)
    assert order.tolist() == [1, 3, 6, 2, 5, 0, 4, 7]
    assert starts.tolist() == [0, 3, 5] and counts.tolist() == [3, 2, 3]


def test_positives_are_uniform_over_the_query_cluster() -> None:
    pos_label = torch.tensor([1, 0, 2])
    picked = sample_positives(LABELS, pos_label, 3, torch.Generator().manual_seed(0))
    u = torch.rand(3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    members = [[2, 5], [1, 3, 6], [0, 4, 7]]
    assert picked.tolist() == [m[int(x * len(m))] for m, x in zip(members, u.tolist())]


def test_random_negatives_are_uniform_outside_the_cluster() -> None:
    """Label 1 (entries 2, 5): the others in sorted order are [1, 3, 6, 0, 4, 7]; draw ``u``
    picks ``others[floor(u * 6)]``."""
    picked = random_negatives(LABELS, torch.tensor([1, 0]), 5, 3, torch.Generator().manual_seed(3))
    u = torch.rand((2, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    others = {0: [1, 3, 6, 0, 4, 7], 1: [2, 5, 0, 4, 7]}
    expected = [[others[0][int(x * 6)] for x in u[0].tolist()], [others[1][int(x * 5)] for x in u[1].tolist()]]
    assert picked.tolist() == expected
    many = random_negatives(LABELS, torch.tensor([1]), 2000, 3, torch.Generator().manual_seed(1))
    assert set(many.flatten().tolist()) == {0, 1, 3, 4, 6, 7}


def test_hard_negatives_are_the_most_similar_outside_the_cluster() -> None:
    # query of cluster 0 (1, 3, 6): most similar first 0, 1, 2, 3, 4, ... -> 0, 2, 4
    assert hard_negatives(SIMILARITY, LABELS, torch.tensor([0]), 3, 3).tolist() == [[0, 2, 4]]
    # cluster 2 (0, 4, 7): 1, 2, 3, 5, 6
    assert hard_negatives(SIMILARITY, LABELS, torch.tensor([2]), 5, 3).tolist() == [[1, 2, 3, 5, 6]]
    with pytest.raises(ValueError, match="lower neg_num"):
        hard_negatives(SIMILARITY, LABELS, torch.tensor([2]), 6, 3)


@pytest.mark.parametrize("largest, label, allowed", [
    (True, 0, {0, 2}),        # semihard: pool = 4 most similar {0, 1, 2, 3}; 1, 3 are cluster 0
    (False, 0, {4, 5, 7}),    # semieasy: pool = 4 least similar {4, 5, 6, 7}; 6 is cluster 0
    (True, 1, {0, 1, 3}),     # semihard, cluster 1 (2, 5)
])
def test_pool_negatives_come_from_the_pool_outside_the_cluster(largest: bool, label: int, allowed: set) -> None:
    seen: set[int] = set()
    for seed in range(40):
        picked = pool_negatives(SIMILARITY, LABELS, torch.tensor([label]), 2, 4, largest,
                                torch.Generator().manual_seed(seed))
        assert picked.shape == (1, 2)
        seen |= set(picked.flatten().tolist())
    assert seen == allowed


def test_pool_negatives_without_a_valid_entry_is_an_error() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="semihard_neg_pool_num"):
        pool_negatives(torch.tensor([[0.9, 0.8, 0.1, 0.0]]), labels, torch.tensor([0]), 2, 2, True,
                       torch.Generator().manual_seed(0))


def test_margins_match_hand_computation() -> None:
    pos = torch.tensor([0.6, 0.99, -0.999])
    assert cos_margin(pos, -0.5).tolist() == pytest.approx([1.1, 1.49, -0.499])
    # m = 0.1: cos(acos(0.6) + 0.1) = 0.6 cos 0.1 - 0.8 sin 0.1; -0.999 <= cos(pi - 0.1): c - 0.1 sin(pi - 0.1)
    assert arc_margin(pos, 0.1).tolist() == pytest.approx(
        [0.517136, 0.99 * math.cos(0.1) - math.sqrt(1 - 0.99**2) * math.sin(0.1), -1.008983], abs=1e-6)
    # m = -0.2: 0.6 < cos 0.2 -> 0.6 cos 0.2 + 0.8 sin 0.2; 0.99 >= cos 0.2 -> 0.99 + 0.2 sin 0.2
    assert arc_margin(pos[:2], -0.2).tolist() == pytest.approx([0.746975, 1.029734], abs=1e-6)
    assert apply_margins(pos, False, 0.3, False, 0.1).tolist() == pos.tolist()


def small_model(length: int = 4, num_classes: int = 3, **kwargs) -> InterCLRMoCo:
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
    memory = InterCLRMemory(length=length, feat_dim=2, momentum=1.0, num_classes=num_classes, min_cluster=0,
                            split="two_means")
    kwargs = {"queue_len": 8, "feat_dim": 2, "momentum": 0.9, "neg_num": 2, "neg_sampling": "hard",
              "num_classes": num_classes, **kwargs}
    return InterCLRMoCo(backbone, MoCoV2Neck(32, 8, 2), ContrastiveHead(temperature=0.2), memory_bank=memory,
                        **kwargs)


def test_inter_loss_matches_hand_computation() -> None:
    """Query q = [1, 0] of sample 0, alone in cluster 0 (its positive is its own entry, [1, 0]);
    hard negatives (2) among [0.6, 0.8], [0, 1] (cluster 1) and [-1, 0] (cluster 2): similarities
    0.6 and 0. Positive 1 with the 0.x margin -0.5 -> 1.5; T = 0.2:
    loss = -log(e^7.5 / (e^7.5 + e^3 + e^0)) = log(1 + e^-4.5 + e^-7.5) = 0.011594."""
    model = small_model()
    model.memory_bank.init_memory(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]]),
                                  torch.tensor([0, 1, 1, 2]))
    pos, neg = model.inter_logits(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert pos.flatten().tolist() == pytest.approx([1.0]) and neg.flatten().tolist() == pytest.approx([0.6, 0.0])
    loss = model.head(apply_margins(pos, *model.inter_margins), neg)["loss"].item()
    assert loss == pytest.approx(math.log(1 + math.exp(-4.5) + math.exp(-7.5)), abs=1e-6)
    assert loss == pytest.approx(0.011594, abs=1e-6)


def test_intra_loss_with_a_cos_margin_matches_hand_computation() -> None:
    """MoCo's hand example (test_moco) with an intra-image cosine margin 0.1: q1 = [1, 0],
    k1 = [0.6, 0.8]; q2 = [0, 1], k2 = [0.8, 0.6]; queue [0, 1], [1, 0], [-1, 0]; T = 0.5.
    Positives 0.6 - 0.1 = 0.5: loss_1 = -log(e^1 / (e^1 + e^0 + e^2 + e^-2)),
    loss_2 = -log(e^1 / (e^1 + e^2 + e^0 + e^0)); weighted by 0.75."""
    queue = torch.tensor([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64).T
    pos, neg = moco_logits(torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
                           torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64), queue)
    loss = ContrastiveHead(temperature=0.5)(apply_margins(pos, True, 0.1, False, 0.0), neg)["loss"].item()
    e = math.e
    hand = (-math.log(e / (e + 1 + e**2 + e**-2)) - math.log(e / (e + e**2 + 2))) / 2
    assert 0.75 * loss == pytest.approx(0.75 * hand, abs=1e-9)
    assert hand == pytest.approx(1.456764, abs=1e-6)


def views(n: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, 1, 8, 8, generator=g), torch.randn(n, 1, 8, 8, generator=g)]


@pytest.mark.parametrize("share_neck, online", [(True, True), (False, False)])
def test_forward_step_weights_losses_and_updates_the_bank(share_neck: bool, online: bool) -> None:
    torch.manual_seed(0)
    model = small_model(length=6, share_neck=share_neck, online_labels=online, neg_sampling="random")
    model.memory_bank.init_memory(torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    idx = torch.tensor([0, 2, 4, 5])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.intra_loss_weight, model.inter_loss_weight = 1.0, 1.0
    torch.manual_seed(1)
    unweighted = model(views(), mode="train", idx=idx)
    model.load_state_dict(state)
    model.intra_loss_weight, model.inter_loss_weight = 0.75, 0.25
    torch.manual_seed(1)
    weighted = model(views(), mode="train", idx=idx)
    assert weighted["intra_loss"].item() == pytest.approx(0.75 * unweighted["intra_loss"].item(), rel=1e-5)
    assert weighted["inter_loss"].item() == pytest.approx(0.25 * unweighted["inter_loss"].item(), rel=1e-5)
    assert set(weighted) == ({"intra_loss", "inter_loss", "change_ratio"} if online else {"intra_loss", "inter_loss"})
    bank = model.memory_bank.feature_bank
    assert torch.allclose(bank[idx].norm(dim=1), torch.ones(4))
    assert (not share_neck) == hasattr(model, "inter_neck_k")
    # with a shared neck the step's keys went both to the queue and (momentum 1) to the bank
    assert torch.allclose(model.queue[:, :4].T, bank[idx]) == share_neck


def test_memory_simple_update_and_assigned_labels() -> None:
    memory = InterCLRMemory(length=4, feat_dim=2, momentum=0.5, num_classes=2, min_cluster=0, split="two_means")
    memory.init_memory(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1, 0, 1]))
    memory.update_simple_memory(torch.tensor([0]), torch.tensor([[0.0, 2.0]]))
    s = 1 / math.sqrt(2)
    assert memory.feature_bank[0].tolist() == pytest.approx([s, s])
    assert memory.label_bank.tolist() == [0, 1, 0, 1]
    memory.assign_label(torch.tensor([1, 1, 0, 0]))
    assert memory.label_bank.tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="empty"):
        memory.assign_label(torch.tensor([1, 1, 1, 1]))
    ratio = memory.update_samples_memory(torch.tensor([1]), torch.tensor([[1.0, -0.5]]))
    assert float(ratio) == 1.0 and memory.label_bank[1].item() == 0  # 0.5 [0, 1] + 0.5 [0.894, -0.447]: nearer [1, 0]


@pytest.mark.parametrize("kind, name", [("algorithms", "InterCLRMoCo"), ("hooks", "InterCLRHook")])
def test_a_misspelt_key_is_a_config_error(kind: str, name: str) -> None:
    assert_validated_from_config(kind, name)


class FakeRunner(SimpleNamespace):
    """What the hook reads of the trainer: model, dataset, epoch/iter counters, seed, logs."""

    def __init__(self, model: InterCLRMoCo, **kwargs) -> None:
        super().__init__(model=model, dataset=[None] * model.memory_bank.length, epoch=0, iter=0, max_epochs=3,
                         settings=SimpleNamespace(seed=0), logger=SimpleNamespace(message=lambda text: None),
                         records=[], **kwargs)

    def log_metrics(self, record: dict) -> None:
        self.records.append(record)


def test_hook_warmup_online_upkeep_and_resumed_memory() -> None:
    model = small_model(length=6)
    model.memory_bank.init_memory(torch.randn(6, 2), torch.tensor([0, 0, 1, 1, 2, 2]))
    hook = InterCLRHook(extractor={"pipeline": []}, clustering={"k": 3}, centroids_update_interval=2,
                        evaluate_interval=2, warmup_epochs=1)
    hook.extract = lambda runner: pytest.fail("a resumed memory must not be clustered again")
    runner = FakeRunner(model)
    hook.selfsup_before_run(runner)
    hook.selfsup_before_epoch(runner)
    assert (model.intra_loss_weight, model.inter_loss_weight) == (1.0, 0.0)
    runner.epoch = 1
    hook.selfsup_before_epoch(runner)
    assert (model.intra_loss_weight, model.inter_loss_weight) == (0.75, 0.25)
    hook.selfsup_after_iter(runner, {})
    assert runner.records == []
    runner.iter = 1
    hook.selfsup_after_iter(runner, {})
    assert runner.records == [{"mode": "clustering", "empty_clusters": 0, "min_cluster": 2, "max_cluster": 2}]


def test_hook_offline_labels_recluster_every_interval() -> None:
    """online_labels = false: after epoch 1 of 3 (interval 1) a k-means round relabels the bank."""
    model = small_model(length=6, online_labels=False)
    model.memory_bank.init_memory(torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    hook = InterCLRHook(extractor={"pipeline": []}, clustering={"k": 3, "pca_dim": -1, "backend": "torch"},
                        online_labels=False, interval=1)
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0], [-0.9, -0.1]])
    hook.extract = lambda runner: features
    runner = FakeRunner(model)
    hook.selfsup_before_run(runner)
    hook.selfsup_after_epoch(runner)
    labels = model.memory_bank.label_bank.tolist()
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5] and len(set(labels)) == 3
    runner.epoch = 2  # the last epoch: no round whose labels would never be used
    hook.extract = lambda runner: pytest.fail("no round after the last epoch")
    hook.selfsup_after_epoch(runner)


def test_hook_options_are_checked() -> None:
    with pytest.raises(ValueError, match="evaluate_interval"):
        InterCLRHook(extractor={"pipeline": []}, clustering={"k": 2}, evaluate_interval=0)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        InterCLRHook(extractor={"pipeline": []}, clustering={"k": 1})


@pytest.mark.parametrize("values, expected", [
    ({"model.neg_sampling": "hardest"},
     "model: InterCLRMoCo (selfsup-contrastive 0.1.0) could not be built: ValueError: InterCLRMoCo: neg_sampling "
     "must be one of 'semihard', 'semieasy', 'random', 'hard', got 'hardest'"),
    ({"model.neg_num": 70000},
     "model: InterCLRMoCo (selfsup-contrastive 0.1.0) could not be built: ValueError: InterCLRMoCo: neg_num = 70000 "
     "is larger than the memory bank (memory_bank.length = 60000); lower neg_num"),
    ({"model.memory_bank.num_classes": 1},
     "model.memory_bank: InterCLRMemory (selfsup-models 0.1.0) could not be built: ValueError: InterCLRMemory: "
     "num_classes (the number of clusters) must be > 1, got 1"),
    ({"model.semihard_neg_pool_num": 128000},
     "model: InterCLRMoCo (selfsup-contrastive 0.1.0) could not be built: ValueError: InterCLRMoCo: "
     "semihard_neg_pool_num = 128000 must be between neg_num = 4096 and the memory bank's length = 60000"),
])
def test_nonsensical_options_are_one_line_errors(tmp_path: Path, capsys, values: dict, expected: str) -> None:
    config = derive_config(CONFIGS / FASHION, tmp_path / "bad.toml", values=values)
    assert main([str(config), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"{config}: {expected}" or err.endswith(f"bad.toml: {expected}"), err
    assert len(err.splitlines()) == 1


def test_fashion_mnist_config_trains_through_selfsup_run(run_one_epoch) -> None:
    """Two iterations of 128 images; the hook clusters 256 samples into 4 before the first and
    recomputes centroids and logs cluster statistics after each."""
    work_dir, losses = run_one_epoch(FASHION, {
        "data.samples_per_gpu": 128, "model.memory_bank.length": 256, "model.memory_bank.num_classes": 4,
        "model.memory_bank.min_cluster": 2, "model.num_classes": 4, "model.neg_num": 16,
        "model.semihard_neg_pool_num": 64, "model.queue_len": 256, "model.bn_splits": 2,
        "model.neck.in_channels": 64, "model.neck.hid_channels": 64,
        "hooks.0.clustering.k": 4, "hooks.0.centroids_update_interval": 1, "hooks.0.evaluate_interval": 1,
        "hooks.0.extractor.samples_per_gpu": 128, "hooks.0.extractor.workers_per_gpu": 0})
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    records = read_metrics(work_dir, "train")
    assert all("intra_loss" in r and "inter_loss" in r and "change_ratio" in r for r in records)
    clustering = read_metrics(work_dir, "clustering")
    assert len(clustering) == 3  # the k-means round before the run, then after each iteration
    assert all(r["empty_clusters"] == 0 for r in clustering)
    state = torch.load(work_dir / "latest.pth", weights_only=True, map_location="cpu")["state_dict"]
    bank = next(v for k, v in state.items() if k.endswith("memory_bank.feature_bank"))
    assert bank.shape == (256, 128) and torch.allclose(bank.norm(dim=1), torch.ones(256), atol=1e-5)
    assert next(v for k, v in state.items() if k.endswith("memory_bank.initialized")).item() is True
