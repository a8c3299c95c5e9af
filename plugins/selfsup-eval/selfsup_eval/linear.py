"""Linear probe: a linear classifier trained on frozen features (the linear evaluation protocol).

The model stays frozen (eval mode, no gradients); only a ``BatchNorm1d`` without affine
parameters (optional) and one ``nn.Linear`` layer are trained, with SGD or LARS, cross-entropy
and a per-iteration cosine learning rate; test accuracy is the score.

Two ways to get the training features:

* **cached** (the ``[evaluation.train]`` pipeline is deterministic): the train split's features
  are extracted once (:func:`selfsup_eval.features.extract`, shared with kNN through
  ``context.cache``) and the classifier trains on those tensors on the device. Every process
  holds all features and draws the same shuffled mini-batches from a generator seeded with
  ``context.seed``, so all processes train the same classifier without communicating.
* **uncached** (the pipeline augments): every epoch iterates a shuffled loader over the
  images, runs the frozen model on each batch and trains on the result; under torchrun each
  process takes its shard and the classifier's gradients are averaged before every step.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from selfsup_core.api import dist

from .evaluation import EvalContext

from .features import (
    FEATURES, POOLS, Features, check_choice, eval_loader, extract, iterate_batches, model_output, pool_output,
    require_labels,
)

OWNER = "LinearProbe"
OPTIMIZERS = ("SGD", "LARS")
REFERENCE_BATCH = 256  # lr is given for this total batch size and scaled linearly (MAE)
SCORE_CHUNK = 8192  # test features scored this many at a time

#: Transform class names that draw random numbers (besides every name starting with "Random").
RANDOM_TRANSFORMS = frozenset({
    "ColorJitter", "GaussianBlur", "GaussianNoise", "Solarization", "Lighting", "RandAugment", "AutoAugment",
    "TrivialAugmentWide", "AugMix", "ElasticTransform", "ScaleJitter", "JPEG", "MixUp", "CutMix",
    "RandomAppliedTrans", "SimMIMMaskGenerator", "BlockwiseMaskGenerator", "BEiTMaskGenerator", "MaskingGenerator",
    "RelativeLocDataset",
})
#: Attributes through which datasets, wrappers and composed transforms hold their transforms.
_CHILDREN = ("pipeline", "pipelines", "transforms", "transform", "device_transform", "per_view", "datasets", "dataset")
_MAX_DEPTH = 32


# -- is the training pipeline random? ----------------------------------------------------------
def is_random_name(name: str) -> bool:
    """Whether a transform class name denotes a random transform (``Random*``, a known
    augmentation such as ``ColorJitter``, or a mask generator)."""
    return name.startswith("Random") or name in RANDOM_TRANSFORMS or name.endswith("MaskGenerator")


def random_transforms(dataset: Any) -> list[str]:
    """Class names of the random transforms found in ``dataset``'s pipelines (first-seen order).

    Walks the attributes ``pipeline``, ``pipelines``, ``transforms``, ``transform``,
    ``device_transform``, ``per_view``, ``datasets`` and ``dataset`` (so composed transforms,
    ``RandomAppliedTrans``, multi-view datasets, dataset wrappers and device-side augmentation
    are all seen) and lists, tuples and ``ModuleList``s. A ``DeviceAugment``'s ``source`` (the
    names of the transforms it was split from) is read too. Anything else is not inspected.
    """
    found: list[str] = []
    seen: set[int] = set()

    def note(name: str) -> None:
        if is_random_name(name) and name not in found:
            found.append(name)

    def visit(obj: Any, depth: int) -> None:
        if obj is None or depth > _MAX_DEPTH or isinstance(obj, (str, bytes, int, float, torch.Tensor)):
            return
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Mapping):
            obj = list(obj.values())
        if isinstance(obj, (list, tuple, set, frozenset, nn.ModuleList)):
            for item in obj:
                visit(item, depth + 1)
            return
        note(type(obj).__name__)
        for attribute in _CHILDREN:
            try:
                child = getattr(obj, attribute, None)
            except Exception:  # a property that fails is not a pipeline
                continue
            if child is not obj:
                visit(child, depth + 1)
        source = getattr(obj, "source", None)
        if isinstance(source, (list, tuple)):
            for name in source:
                if isinstance(name, str):
                    note(name)

    visit(dataset, 0)
    return found


def has_random_transforms(dataset: Any) -> bool:
    """True when ``dataset``'s pipeline(s) hold a random transform (see :func:`random_transforms`)."""
    return bool(random_transforms(dataset))


# -- schedule --------------------------------------------------------------------------------
def cosine_lr(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """The learning rate of iteration ``step`` (0-based) of ``total_steps``.

    Linear warmup ``peak * (step + 1) / warmup_steps`` over the first ``warmup_steps``
    iterations, then cosine decay from ``peak`` towards 0 (reached after the last iteration).
    """
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- argument checks ---------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{OWNER}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_number(name: str, value: Any, low: float, high: Optional[float] = None, *,
                  strict_low: bool = False) -> float:
    ok = _is_number(value) and (value > low if strict_low else value >= low) and (high is None or value < high)
    if not ok:
        bounds = f"{'>' if strict_low else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise ValueError(f"{OWNER}: {name} must be a number {bounds}, got {value!r}")
    return float(value)


# -- the evaluator -----------------------------------------------------------------------------
class LinearProbe:
    """Linear evaluation: a linear classifier on the frozen model's features.

    Protocol: ``BatchNorm1d(D, affine=False, eps=1e-6)`` (when ``bn``) then ``Linear(D,
    num_classes)`` (weights ~ N(0, 0.01^2), bias 0, drawn from a generator seeded with the
    run's seed), cross-entropy, ``epochs`` epochs of mini-batches, learning rate with
    ``warmup_epochs`` of linear warmup then cosine decay to 0, set every iteration. The
    weight takes the weight decay (and the LARS trust ratio); the bias takes neither (MAE).
    Scored on the ``[evaluation.test]`` features: top-1 and top-5 accuracy (top-k capped at
    ``num_classes``), as fractions in [0, 1].

    The defaults (BN, SGD, lr 0.1, 100 epochs, batch 256) work for small data sets. The
    published protocols: MAE's linear probing uses the BN without affine + LARS with base lr
    0.1, total batch 16384, 90 epochs, 10 warmup epochs, no weight decay; MoCo's uses no BN,
    SGD with lr 30, momentum 0.9, batch 256, 100 epochs (there with step decay). LARS's
    trust ratio limits each step to ``lr * 0.001`` of the weight's norm, so it needs a large
    (batch-scaled) lr and many iterations; on small data sets prefer SGD.

    Args:
        feature, pool: which features and how they are pooled (see :mod:`selfsup_eval.features`).
        num_classes: classifier outputs; default: the largest train label + 1.
        bn: put ``BatchNorm1d(affine=False)`` before the linear layer (MAE); false: none (MoCo).
        optimizer: ``"SGD"`` or ``"LARS"`` (selfsup-models's ``LARS``, :data:`selfsup_core.api.LARS`).
        lr: base learning rate for a total batch of 256. The learning rate used is
            ``lr * batch_size * world_size / 256`` (MAE's linear scaling rule).
        momentum, weight_decay: of the optimizer.
        epochs: passes over the training set (>= 1).
        warmup_epochs: epochs of linear warmup (< epochs).
        batch_size: samples per process and iteration (>= 2: BatchNorm needs 2). With cached
            features every process trains on batches of ``batch_size * world_size``.
        cache_features: ``True``: extract the train features once and train on them; ``False``:
            run the model on the (augmented) images every epoch; ``"auto"`` (default): cache
            unless the train dataset's pipeline has a random transform
            (:func:`has_random_transforms`).

    Returns ``{"linear_top1", "linear_top5", "linear_train_loss"}``: accuracies (fractions)
    and the mean training loss of the last epoch.
    """

    def __init__(
        self,
        feature: str = "extract",
        pool: str = "avg",
        num_classes: Optional[int] = None,
        bn: bool = True,
        optimizer: str = "SGD",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        epochs: int = 100,
        warmup_epochs: int = 0,
        batch_size: int = 256,
        cache_features: Union[bool, str] = "auto",
    ) -> None:
        self.feature = check_choice(OWNER, "feature", feature, FEATURES)
        self.pool = check_choice(OWNER, "pool", pool, POOLS)
        self.num_classes = None if num_classes is None else _check_int("num_classes", num_classes, 1)
        if not isinstance(bn, bool):
            raise ValueError(f"{OWNER}: bn must be true or false, got {bn!r}")
        self.bn = bn
        by_lower = {name.lower(): name for name in OPTIMIZERS}
        if not isinstance(optimizer, str) or optimizer.lower() not in by_lower:
            raise ValueError(f"{OWNER}: optimizer must be one of {', '.join(map(repr, OPTIMIZERS))}, got {optimizer!r}")
        self.optimizer = by_lower[optimizer.lower()]
        self.lr = _check_number("lr", lr, 0.0, strict_low=True)
        self.momentum = _check_number("momentum", momentum, 0.0, 1.0)
        self.weight_decay = _check_number("weight_decay", weight_decay, 0.0)
        self.epochs = _check_int("epochs", epochs, 1)
        self.warmup_epochs = _check_int("warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"{OWNER}: warmup_epochs must be < epochs ({epochs}), got {warmup_epochs}")
        self.batch_size = _check_int("batch_size", batch_size, 2)
        if not (isinstance(cache_features, bool) or cache_features == "auto"):
            raise ValueError(f"{OWNER}: cache_features must be true, false or 'auto', got {cache_features!r}")
        self.cache_features = cache_features

    # -- evaluate ----------------------------------------------------------------------------
    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        """Train the classifier on the train split, score it on the test split."""
        test = extract(context, "test", feature=self.feature, pool=self.pool)
        test_labels = require_labels(test, "test", OWNER)
        cached = self.uses_cache(context)
        with torch.enable_grad():
            if cached:
                classifier, loss = self._train_cached(context)
            else:
                dim, test_classes = int(test.features.shape[1]), int(test_labels.max()) + 1
                classifier, loss = self._train_uncached(context, dim, test_classes)
        _sync_classifier(classifier, average_buffers=not cached)
        top1, top5 = score(classifier, test.features, test_labels, _out_features(classifier))
        return {"linear_top1": top1, "linear_top5": top5, "linear_train_loss": loss}

    def uses_cache(self, context: EvalContext) -> bool:
        """Whether the classifier trains on cached train features (see ``cache_features``)."""
        if self.cache_features != "auto":
            return bool(self.cache_features)
        found = random_transforms(context.dataset("train"))
        if found:
            self._say(context, f"{OWNER}: the [evaluation.train] pipeline is random ({', '.join(found)}); "
                               "running the model on the images every epoch")
        return not found

    def peak_lr(self, world_size: int) -> float:
        """The learning rate after warmup: ``lr * batch_size * world_size / 256``."""
        return self.lr * self.batch_size * world_size / REFERENCE_BATCH

    def _train_cached(self, context: EvalContext) -> tuple[nn.Module, float]:
        train = extract(context, "train", feature=self.feature, pool=self.pool)
        labels = require_labels(train, "train", OWNER)
        num_classes = self._resolve_classes(int(labels.max()) + 1)
        features = train.features
        count = len(train)
        total_batch = self.batch_size * context.world_size
        steps = max(1, count // total_batch)
        generator = torch.Generator().manual_seed(context.seed)
        classifier = self.build_classifier(int(features.shape[1]), num_classes, generator).to(context.device)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.randperm(count, generator=generator).to(features.device)
            for step in range(steps):
                chosen = order[step * total_batch:(step + 1) * total_batch]
                yield features[chosen], labels[chosen]

        self._say(context, f"{OWNER}: {count} cached {features.shape[1]}-d train features, {num_classes} classes, "
                           f"{self.epochs} epochs of {steps} iterations, {self.optimizer} lr "
                           f"{self.peak_lr(context.world_size):.4g}")
        loss = self._fit(context, classifier, batches, steps, reduce_grads=False)
        return classifier, loss

    def _train_uncached(self, context: EvalContext, dim: int, test_classes: int) -> tuple[nn.Module, float]:
        dataset = context.dataset("train")
        known = _known_labels(dataset)
        if known is not None and len(known) > 0:
            num_classes = self._resolve_classes(int(require_labels(Features(known, known), "train", OWNER).max()) + 1)
        else:  # labels only seen batch by batch: the test labels tell (or num_classes)
            known = None
            num_classes = self.num_classes or test_classes
        steps = len(eval_loader(context, dataset, shuffle=True, drop_last=True, batch_size=self.batch_size))
        if steps == 0:
            raise ValueError(f"{OWNER}: the [evaluation.train] dataset has {len(dataset)} samples, fewer than "
                             f"batch_size * world_size = {self.batch_size * context.world_size}; lower batch_size")
        check_labels = known is None  # known labels were checked above; others are checked per batch
        generator = torch.Generator().manual_seed(context.seed)
        classifier = self.build_classifier(dim, num_classes, generator).to(context.device)

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            loader = eval_loader(context, dataset, shuffle=True, epoch=epoch, drop_last=True, batch_size=self.batch_size)
            with context.eval_mode() as model:
                for img, labels in iterate_batches(context, dataset, loader):
                    with torch.no_grad(), context.autocast():
                        output = model_output(model, img, self.feature)
                    x = pool_output(output, self.pool).float()
                    y = require_labels(Features(x, labels), "train", OWNER).reshape(-1).long()
                    if check_labels and (int(y.min()) < 0 or int(y.max()) >= num_classes):
                        raise ValueError(f"{OWNER}: a train label is outside 0..{num_classes - 1} (labels "
                                         f"{int(y.min())}..{int(y.max())}); label every sample or set num_classes")
                    yield x, y

        self._say(context, f"{OWNER}: {len(dataset)} train images, features recomputed every epoch, "
                           f"{num_classes} classes, {self.epochs} epochs of {steps} iterations, {self.optimizer} lr "
                           f"{self.peak_lr(context.world_size):.4g}")
        loss = self._fit(context, classifier, batches, steps, reduce_grads=context.world_size > 1)
        return classifier, loss

    def _resolve_classes(self, from_labels: int) -> int:
        if self.num_classes is None:
            return from_labels
        if self.num_classes < from_labels:
            raise ValueError(f"{OWNER}: num_classes = {self.num_classes} but the [evaluation.train] labels go up to "
                             f"{from_labels - 1}; raise num_classes or leave it unset")
        return self.num_classes

    # -- the classifier and its training -----------------------------------------------------------
    def build_classifier(self, dim: int, num_classes: int, generator: torch.Generator) -> nn.Module:
        """``[BatchNorm1d(dim, affine=False, eps=1e-6)] + Linear(dim, num_classes)``, weight ~
        N(0, 0.01^2) drawn from ``generator``, bias 0 (on the CPU)."""
        linear = nn.Linear(dim, num_classes, device="meta").to_empty(device="cpu")  # no draw from the global RNG
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
            linear.bias.zero_()
        layers: list[nn.Module] = [nn.BatchNorm1d(dim, affine=False, eps=1e-6)] if self.bn else []
        return nn.Sequential(*layers, linear)

    def build_optimizer(self, classifier: nn.Module, lr: float) -> torch.optim.Optimizer:
        """SGD or LARS over the linear layer: weight decay (and LARS's trust ratio) on the
        weight only."""
        linear = _linear(classifier)
        if self.optimizer == "LARS":
            from selfsup_core.api import LARS  # selfsup-models's registered optimizer, looked up when used

            return LARS([{"params": [linear.weight]},
                         {"params": [linear.bias], "weight_decay": 0.0, "lars_exclude": True}],
                        lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        return torch.optim.SGD([{"params": [linear.weight]}, {"params": [linear.bias], "weight_decay": 0.0}],
                               lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def _fit(
        self,
        context: EvalContext,
        classifier: nn.Module,
        batches: Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        steps_per_epoch: int,
        reduce_grads: bool,
    ) -> float:
        """Train ``classifier`` for ``self.epochs`` epochs of ``batches(epoch)``; returns the
        mean loss of the last epoch (averaged over processes when ``reduce_grads``)."""
        peak = self.peak_lr(context.world_size)
        optimizer = self.build_optimizer(classifier, peak)
        total_steps = self.epochs * steps_per_epoch
        warmup_steps = self.warmup_epochs * steps_per_epoch
        report_every = max(1, self.epochs // 10)
        classifier.train()
        step = 0
        mean_loss = float("nan")
        for epoch in range(self.epochs):
            loss_sum = torch.zeros((), device=context.device)
            seen = 0
            for x, y in batches(epoch):
                lr = cosine_lr(step, total_steps, warmup_steps, peak)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = F.cross_entropy(classifier(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if reduce_grads:
                    for parameter in classifier.parameters():
                        if parameter.grad is not None:
                            dist.all_reduce(parameter.grad, op="mean")
                optimizer.step()
                loss_sum += loss.detach()
                seen += 1
                step += 1
            if seen == 0:
                raise ValueError(f"{OWNER}: epoch {epoch + 1} had no training batches; lower batch_size")
            epoch_loss = loss_sum / seen
            if reduce_grads:
                dist.all_reduce(epoch_loss, op="mean")
            mean_loss = float(epoch_loss)
            if (epoch + 1) % report_every == 0 or epoch + 1 == self.epochs:
                self._say(context, f"{OWNER}: epoch {epoch + 1}/{self.epochs}, loss {mean_loss:.4f}, "
                                   f"lr {cosine_lr(max(0, step - 1), total_steps, warmup_steps, peak):.4g}")
        return mean_loss

    @staticmethod
    def _say(context: EvalContext, text: str) -> None:
        if context.rank == 0:
            context.message(text)

    def __repr__(self) -> str:
        return (f"LinearProbe(feature={self.feature!r}, pool={self.pool!r}, bn={self.bn}, "
                f"optimizer={self.optimizer!r}, lr={self.lr}, epochs={self.epochs}, batch_size={self.batch_size}, "
                f"cache_features={self.cache_features!r})")


# -- helpers -----------------------------------------------------------------------------------
@torch.no_grad()
def score(classifier: nn.Module, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """``(top-1, top-5)`` accuracy of ``classifier`` (put in eval mode) on ``features``
    ``(N, D)`` with ``labels`` ``(N,)``, as fractions; top-5 is top-``min(5, num_classes)``."""
    classifier.eval()
    k = min(5, num_classes)
    top1 = torch.zeros((), dtype=torch.long, device=features.device)
    topk = torch.zeros((), dtype=torch.long, device=features.device)
    labels = labels.to(features.device)
    for start in range(0, features.shape[0], SCORE_CHUNK):
        logits = classifier(features[start:start + SCORE_CHUNK])
        hits = logits.topk(k, dim=1).indices == labels[start:start + SCORE_CHUNK, None]
        top1 += hits[:, 0].sum()
        topk += hits.any(dim=1).sum()
    count = max(1, int(features.shape[0]))
    return int(top1) / count, int(topk) / count


def _linear(classifier: nn.Module) -> nn.Linear:
    return classifier[-1]


def _out_features(classifier: nn.Module) -> int:
    return int(_linear(classifier).out_features)


def _known_labels(dataset: Any) -> Optional[torch.Tensor]:
    """The dataset's labels without loading images (``gt_labels``, ``get_gt_labels()`` or
    ``targets``; through ``ConcatDataset``/``RepeatDataset``), or None."""
    for attribute in ("gt_labels", "targets"):
        value = getattr(dataset, attribute, None)
        if value is not None:
            return torch.as_tensor(value).reshape(-1).long()
    getter = getattr(dataset, "get_gt_labels", None)
    if callable(getter):
        return torch.as_tensor(getter()).reshape(-1).long()
    inner = getattr(dataset, "datasets", None)
    if isinstance(inner, (list, tuple)) and inner:
        parts = [_known_labels(d) for d in inner]
        return None if any(p is None for p in parts) else torch.cat(parts)
    inner = getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        return _known_labels(inner)
    return None


def _sync_classifier(classifier: nn.Module, average_buffers: bool) -> None:
    """Make every process's classifier rank 0's (BN running statistics averaged first when the
    processes saw different shards). No-op in one process."""
    if not dist.is_distributed():
        return
    with torch.no_grad():
        if average_buffers:
            for buffer in classifier.buffers():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer, op="mean")
        for tensor in [*classifier.parameters(), *classifier.buffers()]:
            dist.broadcast(tensor.data, src=0)


__all__ = ["LinearProbe", "cosine_lr", "has_random_transforms", "is_random_name", "random_transforms", "score"]
