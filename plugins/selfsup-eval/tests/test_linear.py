"""LinearProbe: accuracy on separable data, cached and uncached training, the random-pipeline
detection, LARS, argument checks, label errors, exact scoring, determinism and two processes."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from selfsup_eval.evaluation import EvalContext
from selfsup_core.api import LARS
from selfsup_core.testing import run_ranks
from selfsup_eval.linear import LinearProbe, cosine_lr, has_random_transforms, random_transforms, score

if __name__ != "__main__":  # run as the two-process test's worker, the file starts ~2 s faster without these
    from torchvision import transforms as v1
    from torchvision.transforms import v2

    from selfsup_data.datasets import MultiViewDataset, OneViewDataset, RepeatDataset
    from selfsup_data.sources import NumpyArrays
    from selfsup_data.transforms import GaussianBlur, RandomAppliedTrans

    TO_FLOAT = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]

CLASSES = 4
DIM = 16


class Vectors(Dataset):
    """Items ``{"img": x[i], "label": y[i], "idx": i}`` (no ``label`` when ``y`` is None)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"img": self.x[i], "idx": i}
        if self.y is not None:
            item["label"] = int(self.y[i])
        return item


def blobs(count: int, seed: int, classes: int = CLASSES) -> Vectors:
    """Gaussian blobs around ``3 * e_k`` (class k) in 16-d with noise std 0.5: centres are
    4.2 apart, so the classes are linearly separable up to a vanishing fraction."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % classes
    x = 3.0 * torch.eye(DIM)[labels] + 0.5 * torch.randn(count, DIM, generator=generator)
    return Vectors(x, labels)


TRAIN, TEST = blobs(400, seed=1), blobs(200, seed=2)


def make_context(train: Any = TRAIN, test: Any = TEST, seed: int = 0, messages: list[str] | None = None,
                 **kwargs: Any) -> EvalContext:
    """A context over ``train``/``test``; its messages are appended to ``messages``."""
    sink = messages if messages is not None else []
    return EvalContext(model=nn.Identity(), datasets={"train": lambda: train, "test": lambda: test},
                       samples_per_gpu=64, workers_per_gpu=0, seed=seed, message=sink.append, **kwargs)


def probe(**kwargs: Any) -> LinearProbe:
    return LinearProbe(**{"pool": "flatten", "epochs": 10, "batch_size": 64, **kwargs})


TRAIN_KEY = ("features", "train", "extract", "flatten")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only cost time here (a lot on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- accuracy ----------------------------------------------------------------------------------------
def test_separable_blobs_reach_95_percent_with_cached_features():
    messages: list[str] = []
    context = make_context(messages=messages)
    results = probe().evaluate(context)
    assert set(results) == {"linear_top1", "linear_top5", "linear_train_loss"}
    assert all(isinstance(v, float) for v in results.values())
    assert results["linear_top1"] >= 0.95
    assert results["linear_top5"] == 1.0  # 4 classes: top-4 always holds the label
    assert results["linear_train_loss"] < 0.3
    assert TRAIN_KEY in context.cache  # extracted once, there for kNN too
    assert any("cached" in m for m in messages)


def test_uncached_path_trains_on_features_computed_every_epoch():
    messages: list[str] = []
    context = make_context(messages=messages)
    results = probe(cache_features=False, epochs=4, batch_size=32).evaluate(context)
    assert results["linear_top1"] >= 0.95
    assert TRAIN_KEY not in context.cache
    assert any("recomputed every epoch" in m for m in messages)


def test_bn_off_and_lars_train_too():
    no_bn = probe(bn=False).evaluate(make_context())
    assert no_bn["linear_top1"] >= 0.95
    # MAE's effective lr: 0.1 * 16384 / 256 = 6.4 = 25.6 * 64 / 256; LARS grows the weight by at
    # most lr * eta = 0.64 % a step, so it needs more steps than SGD (30 epochs x 6 here)
    lars = probe(optimizer="lars", lr=25.6, epochs=30, warmup_epochs=2)
    assert lars.optimizer == "LARS" and lars.peak_lr(world_size=1) == pytest.approx(6.4)
    assert isinstance(lars.build_optimizer(lars.build_classifier(DIM, CLASSES, torch.Generator()), 0.1), LARS)
    results = lars.evaluate(make_context())
    assert results["linear_top1"] >= 0.95
    assert results["linear_train_loss"] < math.log(CLASSES)  # below chance level: it learned


def test_top5_with_fewer_than_5_classes_and_more_outputs_than_labels():
    train, test = blobs(100, seed=3, classes=2), blobs(50, seed=4, classes=2)
    results = probe().evaluate(make_context(train, test))
    assert results["linear_top1"] >= 0.95 and results["linear_top5"] == 1.0
    wide = probe(num_classes=10).evaluate(make_context(train, test))  # top-5 of 10 outputs
    assert wide["linear_top1"] >= 0.95 and wide["linear_top5"] == 1.0


def test_score_is_exact_top1_and_top5():
    # identity classifier: logits = features; the label ranks 1st, 3rd and 6th of 6
    classifier = nn.Sequential(nn.Linear(6, 6))
    with torch.no_grad():
        classifier[0].weight.copy_(torch.eye(6))
        classifier[0].bias.zero_()
    features = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    labels = torch.tensor([0, 2, 5])
    assert score(classifier, features, labels, 6) == (1 / 3, 2 / 3)
    three = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        three[0].weight.copy_(torch.eye(3))
        three[0].bias.zero_()
    assert score(three, features[:, :3], torch.tensor([0, 2, 1]), 3) == (1 / 3, 1.0)  # top-5 capped at 3


# -- learning rate ---------------------------------------------------------------------------------------
def test_cosine_lr_with_warmup_and_batch_scaling():
    assert cosine_lr(0, 10, 0, 1.0) == 1.0
    assert cosine_lr(5, 10, 0, 1.0) == pytest.approx(0.5)
    assert cosine_lr(9, 10, 0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert cosine_lr(0, 10, 2, 1.0) == 0.5
    assert cosine_lr(1, 10, 2, 1.0) == 1.0
    assert cosine_lr(2, 10, 2, 1.0) == 1.0
    assert cosine_lr(6, 10, 2, 1.0) == pytest.approx(0.5)
    assert LinearProbe(lr=0.1, batch_size=256).peak_lr(world_size=2) == pytest.approx(0.2)
    assert LinearProbe(lr=30, batch_size=128).peak_lr(world_size=1) == pytest.approx(15.0)


def test_progress_is_reported_every_tenth_of_the_epochs():
    messages: list[str] = []
    probe(epochs=20).evaluate(make_context(messages=messages))
    epochs = [m for m in messages if "epoch " in m]
    assert [m.split(",")[0] for m in epochs] == [f"LinearProbe: epoch {e}/20" for e in range(2, 21, 2)]


# -- cache decision ----------------------------------------------------------------------------------
@pytest.fixture
def band_source(tmp_path: Path) -> NumpyArrays:
    """8x8 grey images: class k (0..3) has rows 2k, 2k+1 bright (a horizontal flip keeps the class)."""
    rng = np.random.default_rng(0)
    labels = np.arange(80) % CLASSES
    images = rng.integers(0, 40, (80, 8, 8), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label:2 * label + 2] = 255
    np.savez(tmp_path / "bands.npz", images=images, labels=labels)
    return NumpyArrays(str(tmp_path / "bands.npz"))


def test_has_random_transforms_on_selfsup_datasets(band_source):
    fixed = OneViewDataset(band_source, [v2.Resize(8), *TO_FLOAT])
    flipped = OneViewDataset(band_source, [v2.RandomHorizontalFlip(), *TO_FLOAT])
    nested = OneViewDataset(band_source, [v2.Compose([v2.CenterCrop(8), v2.ColorJitter(0.4)]),
                                          RandomAppliedTrans([GaussianBlur(0.1, 2.0)], p=0.5), *TO_FLOAT])
    assert not has_random_transforms(fixed)
    assert random_transforms(flipped) == ["RandomHorizontalFlip"]
    assert random_transforms(nested) == ["ColorJitter", "RandomAppliedTrans", "GaussianBlur"]
    two_groups = MultiViewDataset(band_source, [1, 1], [[*TO_FLOAT], [v2.RandomGrayscale(), *TO_FLOAT]])
    assert random_transforms(two_groups) == ["RandomGrayscale"]
    assert not has_random_transforms(MultiViewDataset(band_source, [2], [[*TO_FLOAT]]))
    assert has_random_transforms(RepeatDataset(flipped, times=2))
    on_device = OneViewDataset(band_source, [v2.ToImage(), v2.ColorJitter(0.4), v2.ToDtype(torch.float32, scale=True)],
                               augment_on="device")  # the jitter lives only in device_transform
    assert random_transforms(on_device) == ["ColorJitter"]


def test_has_random_transforms_on_plain_objects():
    class TorchvisionLike:
        def __init__(self, transform: Any) -> None:
            self.transform = transform

    class Loop:
        def __init__(self) -> None:
            self.pipeline = [self]

    assert not has_random_transforms(object())
    assert not has_random_transforms(TRAIN)
    assert not has_random_transforms(None)
    assert has_random_transforms(TorchvisionLike(v1.Compose([v1.RandomCrop(4), v1.ToTensor()])))
    assert not has_random_transforms(TorchvisionLike(v1.Compose([v1.CenterCrop(4), v1.ToTensor()])))
    assert not has_random_transforms(Loop())


def test_auto_caches_a_deterministic_pipeline_and_not_a_random_one(band_source):
    fixed = OneViewDataset(band_source, TO_FLOAT)
    flipped = OneViewDataset(band_source, [v2.RandomHorizontalFlip(), *TO_FLOAT])
    auto = probe(epochs=3, batch_size=16)
    key = ("features", "train", "extract", "flatten")

    cached = make_context(fixed, fixed)
    assert auto.uses_cache(cached)
    assert auto.evaluate(cached)["linear_top1"] >= 0.95 and key in cached.cache

    messages: list[str] = []
    uncached = make_context(flipped, fixed, messages=messages)
    assert not auto.uses_cache(uncached)
    assert auto.evaluate(uncached)["linear_top1"] >= 0.95 and key not in uncached.cache
    assert any("random (RandomHorizontalFlip)" in m for m in messages)
    assert probe(cache_features=True).uses_cache(uncached) and not probe(cache_features=False).uses_cache(cached)


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"epochs": 0}, "LinearProbe: epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, "LinearProbe: epochs must be an integer >= 1, got 2.5"),
    ({"epochs": 5, "warmup_epochs": 5}, "LinearProbe: warmup_epochs must be < epochs (5), got 5"),
    ({"warmup_epochs": -1}, "LinearProbe: warmup_epochs must be an integer >= 0, got -1"),
    ({"batch_size": 1}, "LinearProbe: batch_size must be an integer >= 2, got 1"),
    ({"num_classes": 0}, "LinearProbe: num_classes must be an integer >= 1, got 0"),
    ({"lr": 0}, "LinearProbe: lr must be a number > 0, got 0"),
    ({"lr": "big"}, "LinearProbe: lr must be a number > 0, got 'big'"),
    ({"momentum": 1.0}, "LinearProbe: momentum must be a number >= 0 and < 1, got 1.0"),
    ({"weight_decay": -0.1}, "LinearProbe: weight_decay must be a number >= 0, got -0.1"),
    ({"optimizer": "Adam"}, "LinearProbe: optimizer must be one of 'SGD', 'LARS', got 'Adam'"),
    ({"bn": "yes"}, "LinearProbe: bn must be true or false, got 'yes'"),
    ({"cache_features": "always"}, "LinearProbe: cache_features must be true, false or 'auto', got 'always'"),
    ({"feature": "pixels"}, "LinearProbe: feature must be one of 'extract', 'backbone', 'neck', got 'pixels'"),
    ({"pool": "max"}, "LinearProbe: pool must be one of 'avg', 'flatten', got 'max'"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        LinearProbe(**kwargs)


@pytest.mark.parametrize("cache", [True, False])
def test_unlabelled_train_set_raises_the_require_labels_error(cache):
    unlabelled = Vectors(TRAIN.x, None)
    with pytest.raises(ValueError, match=re.escape("LinearProbe: the [evaluation.train] dataset gives no 'label'")):
        probe(cache_features=cache, epochs=1).evaluate(make_context(train=unlabelled))
    with pytest.raises(ValueError, match=re.escape("LinearProbe: the [evaluation.test] dataset gives no 'label'")):
        probe(cache_features=cache, epochs=1).evaluate(make_context(test=Vectors(TEST.x, None)))


def test_unlabelled_source_and_too_few_classes_raise(tmp_path, band_source):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((8, 8, 8), np.uint8))
    no_labels = OneViewDataset(NumpyArrays(str(tmp_path / "nolabels.npz")), TO_FLOAT)  # labels -1
    labelled = OneViewDataset(band_source, TO_FLOAT)
    with pytest.raises(ValueError, match=re.escape("LinearProbe: the [evaluation.train] dataset gives 8 of 8 samples "
                                                   "without a label (-1)")):
        probe().evaluate(make_context(no_labels, labelled))
    with pytest.raises(ValueError, match=re.escape("LinearProbe: num_classes = 2 but the [evaluation.train] labels "
                                                   "go up to 3; raise num_classes or leave it unset")):
        probe(num_classes=2).evaluate(make_context(labelled, labelled))


def test_uncached_label_and_size_errors():
    two_class_test = blobs(40, seed=5, classes=2)  # Vectors has no gt_labels: classes come from the test labels
    with pytest.raises(ValueError, match=re.escape("LinearProbe: a train label is outside 0..1")):
        probe(cache_features=False, epochs=1).evaluate(make_context(test=two_class_test))
    assert probe(cache_features=False, epochs=1, num_classes=4).evaluate(make_context(test=two_class_test))
    with pytest.raises(ValueError, match=re.escape("LinearProbe: the [evaluation.train] dataset has 400 samples, "
                                                   "fewer than batch_size * world_size = 512; lower batch_size")):
        probe(cache_features=False, batch_size=512).evaluate(make_context())


# -- determinism -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cache", [True, False])
def test_same_seed_same_results_and_global_rng_untouched(cache):
    kwargs = {"cache_features": cache, "epochs": 2, "batch_size": 32}
    state = torch.get_rng_state()
    first = probe(**kwargs).evaluate(make_context(seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    assert probe(**kwargs).evaluate(make_context(seed=3)) == first
    assert probe(**kwargs).evaluate(make_context(seed=4))["linear_train_loss"] != first["linear_train_loss"]


# -- two processes --------------------------------------------------------------------------------------------
def test_two_processes_train_the_same_classifier(tmp_path):
    """gloo, 2 CPU processes: both paths give the same results on both ranks, and the cached
    path the same as one process with the per-process batch halved (same total batch)."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    run_ranks(__file__, tmp_path, timeout=120)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0] == ranks[1]
    assert ranks[0]["uncached"]["linear_top1"] >= 0.95
    single = probe(epochs=3, batch_size=32).evaluate(make_context())
    assert ranks[0]["cached"] == pytest.approx(single)


def _worker(out: str) -> None:
    from selfsup_core.engine import dist

    info = dist.init_from_env("cpu")
    results = {}
    for name, kwargs in (("cached", {"batch_size": 16}), ("uncached", {"batch_size": 16, "cache_features": False})):
        context = make_context(rank=info.rank, world_size=info.world_size)
        results[name] = probe(epochs=3, **kwargs).evaluate(context)
    torch.save(results, Path(out) / f"rank{info.rank}.pt")
    dist.destroy(wait=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
