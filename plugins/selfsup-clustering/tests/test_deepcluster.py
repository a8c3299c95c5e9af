"""DeepCluster: the algorithm, the DeepClusterHook (labels reach the dataset, head re-initialised,
uniform sampling, re-weighting, checkpoint round trip, errors) and one epoch through selfsup-run."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from selfsup_core.engine.data import build_loader
from selfsup_core.errors import SelfSupError
from selfsup_data.datasets.deepcluster import DeepClusterDataset
from selfsup_data.sources import NumpyArrays
from selfsup_models.backbones.resnet import ResNet
from selfsup_models.heads import ClsHead
from selfsup_models.necks import AvgPool2dNeck

from selfsup_clustering.deepcluster import DeepCluster
from selfsup_clustering.deepcluster_hook import DeepClusterHook, UniformClusterSampler

FASHION = "deepcluster_resnet18_1xb256-steplr-200e_fashion-mnist.toml"
PIPELINE = [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]


def tiny_deepcluster(num_classes: int = 4, with_sobel: bool = False) -> DeepCluster:
    torch.manual_seed(0)
    backbone = ResNet(depth=18, in_channels=2 if with_sobel else 1, stem_channels=4, base_channels=4,
                      stem_type="cifar", norm_cfg={"type": "BN"})
    return DeepCluster(backbone, with_sobel=with_sobel, neck=AvgPool2dNeck(),
                       head=ClsHead(in_channels=32, num_classes=num_classes))


def built_pipeline() -> list:
    from selfsup_core.build import Builder

    return [Builder().build(t, "transforms") for t in PIPELINE]


@pytest.fixture
def setup(fm_npz: Path, make_runner):
    """A tiny DeepCluster, a 64-image DeepClusterDataset, its loader and a fake runner."""

    def make(num_classes: int = 4, samples: int = 64, **hook_args):
        source = NumpyArrays(file=str(fm_npz))
        if samples < len(source):
            from selfsup_data.sources import Subset

            source = Subset(source=source, num_samples=samples, seed=0)
        dataset = DeepClusterDataset(source, built_pipeline())
        loader, sampler = build_loader(dataset, batch_size=16, num_workers=0, seed=0, rank=0, world_size=1,
                                       drop_last=True, pin_memory=False, persistent_workers=False,
                                       prefetch_factor=None)
        model = tiny_deepcluster(num_classes)
        records = []
        runner = make_runner(model, dataset=dataset, data_loader=loader, sampler=sampler, max_epochs=3,
                             log_metrics=records.append)
        args = {"extractor": {"pipeline": built_pipeline(), "samples_per_gpu": 32},
                "clustering": {"k": num_classes, "pca_dim": 8, "backend": "torch"}, **hook_args}
        return model, dataset, runner, DeepClusterHook(**args), records

    return make


def test_forward_train_classifies_pseudo_labels() -> None:
    model = tiny_deepcluster(with_sobel=True)
    img = torch.randn(6, 1, 12, 12)
    losses = model(img, mode="train", pseudo_label=torch.tensor([0, 1, 2, 3, 0, 1]))
    assert set(losses) == {"loss", "acc"} and torch.isfinite(losses["loss"])
    # uniform class weights: the plain cross-entropy of the head's scores
    scores = model.head(model.neck(model.backbone(model.sobel_layer(img))))[0]
    expected = torch.nn.functional.cross_entropy(scores, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert torch.allclose(losses["loss"], expected, atol=1e-6)
    assert model.clustering_features(img).shape == (6, 32)
    with pytest.raises(ValueError, match="DeepClusterDataset"):
        model(img, mode="train")


def test_set_reweight_matches_inverse_square_root_cluster_sizes() -> None:
    model = tiny_deepcluster(num_classes=3)
    model.set_reweight(torch.tensor([0, 0, 0, 0, 1]), reweight_pow=0.5)
    # sizes 4, 1, 0 -> 1/sqrt(4) = 0.5, 1, 1/sqrt(1e-10) = 1e5; normalised
    raw = [0.5, 1.0, 1e5]
    assert torch.allclose(model.loss_weight, torch.tensor([r / sum(raw) for r in raw]), rtol=1e-5)
    assert model.head.criterion.weight is model.loss_weight


def test_hook_assigns_labels_to_the_dataset_and_reinitialises_the_head(setup) -> None:
    model, dataset, runner, hook, records = setup(reweight=True)
    with torch.no_grad():
        model.head.fc_cls.weight.fill_(1.0)
        model.head.fc_cls.bias.fill_(1.0)
    assert (torch.as_tensor(dataset.clustering_labels) == -1).all()
    hook.selfsup_before_run(runner)
    labels = torch.as_tensor(dataset.clustering_labels)
    assert torch.equal(labels, hook.labels) and labels.min() >= 0 and labels.max() < 4
    assert dataset[5]["pseudo_label"] == int(labels[5])
    # re-initialised: N(0, 0.01) weights and zero bias again
    assert model.head.fc_cls.weight.std() < 0.05 and not model.head.fc_cls.bias.any()
    # uniform sampling installed in the loader; class weights follow the cluster sizes
    assert isinstance(runner.sampler, UniformClusterSampler) and runner.data_loader.batch_sampler.sampler is runner.sampler
    counts = torch.bincount(labels, minlength=4).double()
    raw = (1.0 / (counts + 1e-10)) ** 0.5
    assert torch.allclose(model.loss_weight.double(), raw / raw.sum(), rtol=1e-5)
    assert records and records[0]["mode"] == "clustering" and model.training
    batch = next(iter(runner.data_loader))
    assert torch.equal(batch["pseudo_label"], labels[batch["idx"]])


def test_labels_are_the_kmeans_of_the_extracted_features(setup) -> None:
    model, dataset, runner, hook, _ = setup()
    features = hook.extract(runner)
    assert features.shape == (64, 32)
    with torch.no_grad():
        model.eval()
        direct = model.clustering_features(torch.stack([dataset[i]["img"] for i in range(64)]))
        model.train()
    assert torch.allclose(features, direct, atol=1e-5)
    assert torch.equal(hook.cluster(features), hook.kmeans.cluster(features))


def test_hook_reclusters_after_each_epoch_but_the_last(setup) -> None:
    model, dataset, runner, hook, records = setup()
    hook.selfsup_before_run(runner)
    runner.epoch = 0
    hook.selfsup_after_epoch(runner)
    assert len(records) == 2
    runner.epoch = 2  # the last of max_epochs = 3
    hook.selfsup_after_epoch(runner)
    assert len(records) == 2


def test_labels_survive_a_checkpoint_round_trip_without_reclustering(setup) -> None:
    model, dataset, runner, hook, _ = setup()
    hook.selfsup_before_run(runner)
    state = hook.state_dict()
    model2, dataset2, runner2, hook2, records2 = setup()
    hook2.load_state_dict(state)
    head_before = model2.head.fc_cls.weight.clone()
    hook2.selfsup_before_run(runner2)
    assert torch.equal(torch.as_tensor(dataset2.clustering_labels), state["labels"])
    assert torch.equal(model2.head.fc_cls.weight, head_before)  # the checkpoint's head is kept
    assert records2 == [] and isinstance(runner2.sampler, UniformClusterSampler)


def test_fewer_samples_than_clusters_names_both_numbers(setup) -> None:
    model, dataset, runner, hook, _ = setup(num_classes=100, samples=64)
    with pytest.raises(SelfSupError, match=r"the training set has 64 samples, fewer than the 100 clusters of "
                                           r"clustering.k; lower clustering.k .* to at most 64"):
        hook.selfsup_before_run(runner)


def test_hook_config_errors(setup) -> None:
    with pytest.raises(ValueError, match="exactly one of 'pipeline'"):
        DeepClusterHook(extractor={}, clustering={"k": 3})
    with pytest.raises(ValueError, match="clustering.k"):
        DeepClusterHook(extractor={"pipeline": []}, clustering={})
    with pytest.raises(ValueError, match="unknown key.*pca in clustering"):
        DeepClusterHook(extractor={"pipeline": []}, clustering={"k": 3, "pca": 3})
    model, dataset, runner, hook, _ = setup()
    runner.model = tiny_deepcluster(num_classes=5)
    with pytest.raises(SelfSupError, match="clustering.k = 4 but the head classifies 5"):
        hook.selfsup_before_run(runner)


def test_one_epoch_of_the_fashion_config_lowers_the_loss(run_config, small_values) -> None:
    values = small_values(**{"model.head.in_channels": 64, "model.head.num_classes": 10,
                             "hooks.0.clustering.k": 10, "hooks.0.clustering.pca_dim": 16})
    work_dir, losses = run_config(FASHION, values)
    assert len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert losses[0] == pytest.approx(math.log(10), abs=0.3)  # a fresh head over 10 clusters
    state = torch.load(work_dir / "latest.pth", weights_only=True)
    (labels,) = [v["labels"] for k, v in state["hooks"].items() if k.endswith("DeepClusterHook")]
    assert labels.shape == (256,) and labels.max() < 10


def test_deepcluster_rounds_get_fresh_reproducible_seeds(setup, monkeypatch) -> None:
    """0.x draws a new k-means seed every round; ours derive from (run seed, clustering.seed, round)."""
    from selfsup_clustering.kmeans import Kmeans

    model, dataset, runner, hook, _ = setup()
    seen: list[int] = []
    real = Kmeans.cluster

    def record(self, features, seed=None):
        seen.append(seed)
        return real(self, features, seed=seed)

    monkeypatch.setattr(Kmeans, "cluster", record)
    hook.selfsup_before_run(runner)          # round 0
    runner.epoch = 0
    hook.selfsup_after_epoch(runner)         # round 1
    runner.epoch = 1
    hook.selfsup_after_epoch(runner)         # max_epochs = 3: epoch 1 is not the last -> round 2
    kmeans = hook.kmeans
    run_seed = int(runner.settings.seed)
    assert seen == [kmeans.round_seed(run_seed, r) for r in range(3)]
    assert len(set(seen)) == 3                                   # every round its own centroids
    assert kmeans.round_seed(run_seed, 1) == Kmeans(k=2, seed=kmeans.seed).round_seed(run_seed, 1)  # reproducible
    assert kmeans.round_seed(run_seed + 1, 1) != kmeans.round_seed(run_seed, 1)
    assert Kmeans(k=2, seed=7, seed_per_round=False).round_seed(run_seed, 5) == 7   # the old behaviour
