"""Fine-tuning evaluation: the whole backbone plus a linear classifier trained with labels,
with layer-wise learning-rate decay for ViTs (BEiT / MAE).

A *copy* of the model is fine-tuned (the pre-trained model is left as it was, so this can
run as online evaluation during pre-training too): images of ``[evaluation.train]`` go
through the copy's extraction path (``model(img, mode="extract")``: the algorithm decides,
e.g. MAE's unmasked encoder), are pooled to one vector (``pool``), normalised (``norm``) and
classified by a new ``Linear``; cross-entropy with label smoothing; AdamW over the backbone
and the classifier only (the pre-training neck and head take no part), built by the core's
:func:`selfsup_core.engine.optim.build_optimizer` so that ``layer_decay_rate`` follows the
same rule as a training config: parameter ``blocks.<i>.`` gets
``lr * layer_decay_rate ** (num_layers - i)``, the patch embedding, tokens and position
embedding ``lr * layer_decay_rate ** (num_layers + 1)``, the classifier ``lr``; no weight
decay on biases, norms, tokens and position embeddings. Per-iteration linear warmup then
cosine decay to 0. Scored on ``[evaluation.test]``: top-1 / top-5 accuracy.

MAE's ViT-B fine-tuning recipe: AdamW, lr 5e-4 per 256 images (total batch 1024),
weight decay 0.05, betas (0.9, 0.999), layer decay 0.65, 100 epochs with 5 warmup, label
smoothing 0.1, drop path 0.1 (set on the backbone), plus RandAugment/mixup/cutmix in the
``[evaluation.train]`` pipeline if wanted.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any, Optional

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from selfsup_core.api import build_optimizer, dist

from .evaluation import EvalContext

from .features import FEATURES, POOLS, check_choice, eval_loader, extract_dataset, iterate_batches, model_output, \
    pool_output, require_labels
from .linear import _known_labels, cosine_lr

OWNER = "FineTune"
NORMS = ("LN", "BN", "none")
REFERENCE_BATCH = 256


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{OWNER}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = True) -> float:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > low if low_open else value >= low) and (value < high if high_open else value <= high))
    if not ok:
        raise ValueError(f"{OWNER}: {name} must be a number in {'(' if low_open else '['}{low:g}, {high:g}"
                         f"{')' if high_open else ']'}, got {value!r}")
    return float(value)


class FineTuneNet(nn.Module):
    """``model``'s extraction path -> ``pool`` -> ``norm`` -> ``Linear``: logits ``(N, classes)``."""

    def __init__(self, model: nn.Module, norm: nn.Module, head: nn.Linear, feature: str, pool: str) -> None:
        super().__init__()
        self.model, self.norm, self.head = model, norm, head
        self.feature, self.pool = feature, pool

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        x = pool_output(model_output(self.model, img, self.feature), self.pool)
        return self.head(self.norm(x))

    def trainable(self) -> nn.Module:
        """The modules the optimizer updates: the backbone (or the whole model when it has
        none), the norm and the classifier, named ``backbone.*``, ``norm.*``, ``head.*``."""
        backbone = getattr(self.model, "backbone", None)
        body = backbone if isinstance(backbone, nn.Module) else self.model
        return nn.ModuleDict({"backbone": body, "norm": self.norm, "head": self.head})


class FineTune:
    """Fine-tune a copy of the model with labels and report test accuracy.

    Args:
        feature, pool: the features and their pooling (see :mod:`selfsup_eval.features`).
        num_classes: classifier outputs; default: the largest train label + 1.
        norm: ``"LN"`` (MAE's ``fc_norm``), ``"BN"`` (BatchNorm1d) or ``"none"`` before the classifier.
        lr: learning rate per 256 images; the one used is ``lr * batch_size * world_size / 256``.
        weight_decay: AdamW weight decay (not on biases, norms, tokens, position embeddings).
        betas: AdamW betas.
        layer_decay_rate: layer-wise lr decay in (0, 1]; 1 (or None) turns it off.
        epochs, warmup_epochs: schedule (per-iteration warmup then cosine to 0).
        batch_size: images per process and iteration.
        label_smoothing: of the cross-entropy.
        grad_clip: max gradient norm, or None.

    Returns ``{"finetune_top1", "finetune_top5", "finetune_train_loss"}`` (fractions; the mean
    loss of the last epoch).
    """

    def __init__(
        self,
        feature: str = "extract",
        pool: str = "avg",
        num_classes: Optional[int] = None,
        norm: str = "LN",
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.999),
        layer_decay_rate: Optional[float] = 0.65,
        epochs: int = 100,
        warmup_epochs: int = 5,
        batch_size: int = 128,
        label_smoothing: float = 0.1,
        grad_clip: Optional[float] = None,
    ) -> None:
        self.feature, self.pool, self.num_classes, self.norm = feature, pool, num_classes, norm
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.layer_decay_rate, self.epochs, self.warmup_epochs = layer_decay_rate, epochs, warmup_epochs
        self.batch_size, self.label_smoothing, self.grad_clip = batch_size, label_smoothing, grad_clip
        check_choice(OWNER, "feature", self.feature, FEATURES)
        check_choice(OWNER, "pool", self.pool, POOLS)
        check_choice(OWNER, "norm", self.norm, NORMS)
        if self.num_classes is not None:
            _check_int("num_classes", self.num_classes, 1)
        _check_number("lr", self.lr, 0.0, math.inf, low_open=True)
        _check_number("weight_decay", self.weight_decay, 0.0, math.inf)
        if len(self.betas) != 2:
            raise ValueError(f"{OWNER}: betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            _check_number("betas", beta, 0.0, 1.0)
        if self.layer_decay_rate is not None:
            _check_number("layer_decay_rate", self.layer_decay_rate, 0.0, 1.0, low_open=True, high_open=False)
        _check_int("epochs", self.epochs, 1)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"{OWNER}: warmup_epochs must be < epochs ({self.epochs}), got {self.warmup_epochs}")
        _check_int("batch_size", self.batch_size, 2 if self.norm == "BN" else 1)
        _check_number("label_smoothing", self.label_smoothing, 0.0, 1.0)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True)

    # -- pieces -------------------------------------------------------------------------------------
    def peak_lr(self, world_size: int) -> float:
        """``lr * batch_size * world_size / 256``."""
        return self.lr * self.batch_size * world_size / REFERENCE_BATCH

    def build_net(self, model: nn.Module, dim: int, num_classes: int, generator: torch.Generator) -> FineTuneNet:
        """A deep copy of ``model`` with the pooled-feature norm and a new classifier (weights
        ~ N(0, (2e-5)^2) from ``generator``, as MAE; bias 0)."""
        body = copy.deepcopy(model)
        norm: nn.Module = {"LN": lambda: nn.LayerNorm(dim, eps=1e-6), "BN": lambda: nn.BatchNorm1d(dim),
                           "none": nn.Identity}[self.norm]()
        head = nn.Linear(dim, num_classes, device="meta").to_empty(device="cpu")
        with torch.no_grad():
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 2e-5)
            head.bias.zero_()
        device = next((p.device for p in body.parameters()), torch.device("cpu"))
        return FineTuneNet(body, norm.to(device), head.to(device), self.feature, self.pool)

    def build_optimizer(self, net: FineTuneNet, lr: float) -> torch.optim.Optimizer:
        """AdamW over :meth:`FineTuneNet.trainable` with layer-wise lr decay (the core's builder)."""
        cfg: dict[str, Any] = {"type": "AdamW", "lr": lr, "weight_decay": self.weight_decay,
                               "betas": list(self.betas), "exclude_bias_and_norm": True,
                               "paramwise_options": {"(cls_token|pos_embed|mask_token|absolute_pos_embed|"
                                                     "relative_position_bias_table)$": {"weight_decay": 0.0}}}
        trainable = net.trainable()
        if self.layer_decay_rate is not None and self.layer_decay_rate < 1.0:
            cfg["layer_decay_rate"] = self.layer_decay_rate
            if not any(".blocks." in f".{n}" or ".layers." in f".{n}" for n, _ in trainable.named_parameters()):
                cfg["num_layers"] = 0  # no transformer blocks: every parameter is "the last layer"
        return build_optimizer(trainable, cfg, path=("evaluation", "evaluators", OWNER))

    # -- evaluate --------------------------------------------------------------------------------
    def evaluate(self, context: EvalContext) -> dict[str, Any]:
        dataset = context.dataset("train")
        steps = len(eval_loader(context, dataset, shuffle=True, drop_last=True, batch_size=self.batch_size))
        if steps == 0:
            raise ValueError(f"{OWNER}: the [evaluation.train] dataset has {len(dataset)} samples, fewer than "
                             f"batch_size * world_size = {self.batch_size * context.world_size}; lower batch_size")
        known = _known_labels(dataset)
        num_classes = self.num_classes
        if num_classes is None:
            if known is None or len(known) == 0:
                raise ValueError(f"{OWNER}: cannot tell the number of classes of [evaluation.train]; set num_classes")
            num_classes = int(known.max()) + 1
        dim = self._feature_dim(context, dataset)
        generator = torch.Generator().manual_seed(context.seed)
        net = self.build_net(context.model, dim, num_classes, generator)
        peak = self.peak_lr(context.world_size)
        optimizer = self.build_optimizer(net, peak)
        total, warmup = self.epochs * steps, self.warmup_epochs * steps
        self._say(context, f"{OWNER}: {len(dataset)} train images, {num_classes} classes, {self.epochs} epochs of "
                           f"{steps} iterations, AdamW lr {peak:.4g}, layer decay {self.layer_decay_rate}")
        step, loss_value = 0, float("nan")
        with torch.enable_grad():
            net.train()
            for epoch in range(self.epochs):
                loader = eval_loader(context, dataset, shuffle=True, epoch=epoch, drop_last=True,
                                     batch_size=self.batch_size)
                loss_sum, seen = torch.zeros((), device=context.device), 0
                for img, labels in iterate_batches(context, dataset, loader):
                    factor = cosine_lr(step, total, warmup, 1.0)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                    y = labels.reshape(-1).long() if labels is not None else None
                    if y is None:
                        raise ValueError(f"{OWNER}: the [evaluation.train] dataset gives no 'label'")
                    with context.autocast():
                        logits = net(img)
                    loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if context.world_size > 1:
                        for parameter in net.parameters():
                            if parameter.grad is not None:
                                dist.all_reduce(parameter.grad, op="mean")
                    if self.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                    optimizer.step()
                    loss_sum += loss.detach()
                    seen += 1
                    step += 1
                epoch_loss = loss_sum / max(1, seen)
                if context.world_size > 1:
                    dist.all_reduce(epoch_loss, op="mean")
                loss_value = float(epoch_loss)
                self._say(context, f"{OWNER}: epoch {epoch + 1}/{self.epochs}, loss {loss_value:.4f}")
        top1, top5 = self._score(context, net, num_classes)
        return {"finetune_top1": top1, "finetune_top5": top5, "finetune_train_loss": loss_value}

    @torch.no_grad()
    def _feature_dim(self, context: EvalContext, dataset: Any) -> int:
        img = dataset[0]["img"]
        img = (img[0] if isinstance(img, (list, tuple)) else img).unsqueeze(0).to(context.device)
        with context.eval_mode() as model:
            return int(pool_output(model_output(model, img, self.feature), self.pool).shape[1])

    def _score(self, context: EvalContext, net: FineTuneNet, num_classes: int) -> tuple[float, float]:
        scoring = attrs.evolve(context, model=net, cache={})
        test = extract_dataset(scoring, context.dataset("test"), feature="extract", pool="flatten")
        labels = require_labels(test, "test", OWNER).to(test.features.device)
        k = min(5, num_classes)
        hits = test.features.topk(k, dim=1).indices == labels[:, None]
        count = max(1, len(test))
        return int(hits[:, 0].sum()) / count, int(hits.any(dim=1).sum()) / count

    @staticmethod
    def _say(context: EvalContext, text: str) -> None:
        if context.rank == 0:
            context.message(text)


__all__ = ["FineTune", "FineTuneNet"]
