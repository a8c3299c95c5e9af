"""ODC: the algorithm (labels from the memory, memory update), the ODCHook schedule, the
memory's checkpoint round trip, memory initialisation by the DeepClusterHook, one epoch."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from selfsup_core.engine.data import build_loader
from selfsup_core.errors import SelfSupError
from selfsup_data.datasets.deepcluster import DeepClusterDataset
from selfsup_data.sources import NumpyArrays, Subset
from selfsup_models.backbones.resnet import ResNet
from selfsup_models.heads import ClsHead
from selfsup_models.memories import ODCMemory
from selfsup_models.necks import ODCNeck

from selfsup_clustering.deepcluster_hook import DeepClusterHook
from selfsup_clustering.odc import ODC, ODCHook

FASHION = "odc_resnet18_1xb256-steplr-200e_fashion-mnist.toml"


def tiny_odc(length: int = 64, num_classes: int = 4, min_cluster: int = 2) -> ODC:
    torch.manual_seed(0)
    backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar",
                      norm_cfg={"type": "BN"})
    neck = ODCNeck(in_channels=32, hid_channels=16, out_channels=8, norm_cfg={"type": "BN"})
    memory = ODCMemory(length=length, feat_dim=8, momentum=0.5, num_classes=num_classes, min_cluster=min_cluster)
    return ODC(backbone, neck=neck, head=ClsHead(in_channels=8, num_classes=num_classes), memory_bank=memory)


def filled(model: ODC, seed: int = 0) -> ODC:
    generator = torch.Generator().manual_seed(seed)
    n, k = model.memory_bank.length, model.memory_bank.num_classes
    model.memory_bank.init_memory(torch.randn(n, 8, generator=generator), torch.arange(n) % k)
    return model


def test_forward_train_uses_memory_labels_and_updates_the_memory() -> None:
    model = filled(tiny_odc())
    memory = model.memory_bank
    img, idx = torch.randn(6, 1, 12, 12), torch.tensor([0, 5, 9, 13, 20, 33])
    bank_before = memory.feature_bank.clone()
    targets = memory.label_bank[idx].clone()
    losses = model(img, mode="train", idx=idx)
    assert set(losses) == {"loss", "acc", "change_ratio"}
    # the memory received the (normalised, blended) features of exactly these samples
    changed = (memory.feature_bank != bank_before).any(dim=1)
    assert torch.equal(torch.nonzero(changed).flatten(), idx)
    # the relabelled samples now carry their nearest centroid's label
    relabelled = (memory.feature_bank[idx] @ memory.centroids.t()).argmax(dim=1)
    assert torch.equal(memory.label_bank[idx], relabelled)
    assert float(losses["change_ratio"]) == pytest.approx(float((relabelled != targets).float().mean()))
    assert torch.isfinite(losses["loss"])


def test_loss_is_the_weighted_cross_entropy_of_the_memory_labels() -> None:
    model = filled(tiny_odc())
    model.eval()  # no dropout: the scores can be recomputed
    img, idx = torch.randn(4, 1, 12, 12), torch.tensor([1, 2, 3, 4])
    model.set_reweight(torch.tensor([0] * 40 + [1] * 16 + [2] * 4 + [3] * 4))
    targets = model.memory_bank.label_bank[idx].clone()
    with torch.no_grad():
        scores = model.head(model.neck(model.extract_feat(img)))[0]
        loss = model.forward_train(img, idx=idx)["loss"]
    expected = torch.nn.functional.cross_entropy(scores, targets, weight=model.memory_bank.loss_weight)
    assert torch.allclose(loss, expected, atol=1e-6)
    # sizes 40, 16, 4, 4 -> (n + 1e-5) ** -0.5, normalised
    raw = [(n + 1e-5) ** -0.5 for n in (40, 16, 4, 4)]
    assert torch.allclose(model.loss_weight, torch.tensor([r / sum(raw) for r in raw]), atol=1e-6)


def test_odc_checks_its_parts() -> None:
    with pytest.raises(ValueError, match="memory_bank.num_classes = 5 but the head classifies 4"):
        backbone = ResNet(depth=18, in_channels=1, stem_channels=4, base_channels=4, stem_type="cifar")
        ODC(backbone, neck=ODCNeck(32, 16, 8), head=ClsHead(in_channels=8, num_classes=4),
            memory_bank=ODCMemory(length=10, feat_dim=8, momentum=0.5, num_classes=5))
    with pytest.raises(ValueError, match="idx"):
        filled(tiny_odc())(torch.randn(2, 1, 8, 8), mode="train")


def test_memory_survives_a_checkpoint_round_trip() -> None:
    model = filled(tiny_odc())
    model(torch.randn(6, 1, 12, 12), mode="train", idx=torch.arange(6))
    model.memory_bank.update_centroids_memory()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = tiny_odc()
    assert not bool(fresh.memory_bank.initialized)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for name in ("feature_bank", "label_bank", "centroids", "loss_weight", "initialized"):
        assert torch.equal(getattr(fresh.memory_bank, name), getattr(model.memory_bank, name)), name
    assert bool(fresh.memory_bank.initialized)


def test_odc_hook_schedule(make_runner, monkeypatch: pytest.MonkeyPatch) -> None:
    model = filled(tiny_odc())
    calls = []
    memory = model.memory_bank
    monkeypatch.setattr(memory, "update_centroids_memory", lambda *a: calls.append("centroids"))
    monkeypatch.setattr(memory, "deal_with_small_clusters", lambda: calls.append("small"))
    monkeypatch.setattr(model, "set_reweight", lambda labels, power: calls.append(("reweight", power)))
    records = []
    runner = make_runner(model, log_metrics=records.append)
    hook = ODCHook(centroids_update_interval=3, deal_with_small_clusters_interval=2, evaluate_interval=4,
                   reweight=True, reweight_pow=0.25)
    hook.selfsup_before_run(runner)
    for iteration in range(6):
        runner.iter = iteration
        hook.selfsup_after_iter(runner, {})
    assert calls.count("centroids") == 2 and calls.count("small") == 3 and calls.count(("reweight", 0.25)) == 6
    assert len(records) == 1 and records[0]["mode"] == "clustering" and records[0]["empty_clusters"] == 0
    with pytest.raises(SelfSupError, match="no ODCMemory"):
        hook.selfsup_before_run(make_runner(torch.nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="centroids_update_interval must be >= 1"):
        ODCHook(centroids_update_interval=0)


def test_deepcluster_hook_fills_the_memory(fm_npz: Path, make_runner) -> None:
    from selfsup_core.build import Builder

    pipeline = [Builder().build(t, "transforms") for t in
                [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]]
    dataset = DeepClusterDataset(Subset(source=NumpyArrays(file=str(fm_npz)), num_samples=64, seed=0), pipeline)
    loader, sampler = build_loader(dataset, batch_size=16, num_workers=0, seed=0, rank=0, world_size=1,
                                   drop_last=True, pin_memory=False, persistent_workers=False, prefetch_factor=None)
    model = tiny_odc(length=64)
    runner = make_runner(model, dataset=dataset, data_loader=loader, sampler=sampler, max_epochs=2,
                         log_metrics=lambda r: None)
    hook = DeepClusterHook(extractor={"pipeline": pipeline}, clustering={"k": 4, "pca_dim": -1, "backend": "torch"},
                           unif_sampling=False, reweight=True, init_memory=True)
    hook.selfsup_before_run(runner)
    memory = model.memory_bank
    assert bool(memory.initialized) and torch.equal(memory.label_bank, hook.labels)
    features = hook.extract(runner)
    assert torch.allclose(memory.feature_bank, features / features.norm(dim=1, keepdim=True), atol=1e-5)
    counts = torch.bincount(hook.labels, minlength=4).double()
    raw = (counts + 1e-5) ** -0.5
    assert torch.allclose(model.loss_weight.double(), raw / raw.sum(), atol=1e-6)
    # a memory of the wrong length is refused with both numbers
    runner.model = tiny_odc(length=60)
    with pytest.raises(SelfSupError, match=r"memory bank holds 60 samples .* training set has 64 samples.*length = 64"):
        hook.selfsup_before_run(runner)


def test_one_epoch_of_the_fashion_config_lowers_the_loss(run_config, small_values) -> None:
    values = small_values(**{"model.neck.in_channels": 64, "model.head.num_classes": 10,
                             "model.memory_bank.num_classes": 10, "model.memory_bank.length": 256,
                             "model.memory_bank.min_cluster": 5, "hooks.0.clustering.k": 10,
                             "hooks.1.evaluate_interval": 4})
    work_dir, losses = run_config(FASHION, values)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    state = torch.load(work_dir / "latest.pth", weights_only=True)["state_dict"]
    assert bool(state["memory_bank.initialized"]) and state["memory_bank.label_bank"].shape == (256,)
    from selfsup_core.testing import read_metrics

    stats = read_metrics(work_dir, "clustering")
    assert len(stats) == 3  # the initial k-means and two ODCHook evaluations (iterations 4 and 8)
