"""``OnlineLinearProbe``: a stop-gradient linear classifier trained alongside pre-training.

solo-learn's online linear evaluation: during every training iteration the backbone's
features of the batch (all views the algorithm passes through ``model.backbone``, pooled to one
vector per view) are detached and fed, with the batch's labels, to a linear classifier that
has its own optimizer. The pre-training is untouched: no gradient reaches the model, the
classifier's initialisation draws from its own seeded generator (not the global RNG), and
the algorithm's outputs are not changed. Every epoch the classifier's accuracy on the batches
it was trained on (each batch scored before its step) and its mean loss are written to
``metrics.jsonl`` as a ``mode = "online_probe"`` record
(``{"online_linear_top1", "online_linear_loss", "epoch", "iter"}``), which ``plot-log`` and the
run's ``curves.png`` draw as accuracy per epoch. Needs a labelled training set (samples
labelled -1 are skipped). The classifier is not saved in checkpoints: a resumed run starts
a fresh one. For a final number use the ``LinearProbe`` evaluator.

Config::

    [[hooks]]
    type = "OnlineLinearProbe"
    num_classes = 10
    lr = 0.1
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from selfsup_core.api import dist
from torch import nn

from .features import pool_output

MODE = "online_probe"


class OnlineLinearProbe:
    """Train a linear classifier on detached backbone features during pre-training.

    Args:
        num_classes: classifier outputs (labels must be in ``0 .. num_classes - 1``).
        lr: the classifier's SGD learning rate (constant).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        seed: seeds the classifier's initialisation (weights ~ N(0, 0.01^2), bias 0).
    """

    def __init__(self, num_classes: int, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 seed: int = 0) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"OnlineLinearProbe: num_classes must be an integer >= 2, got {num_classes!r}")
        if not lr > 0:
            raise ValueError(f"OnlineLinearProbe: lr must be > 0, got {lr}")
        self.num_classes = num_classes
        self.lr, self.momentum, self.weight_decay, self.seed = float(lr), float(momentum), float(weight_decay), int(seed)
        self.classifier: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._handles: list[Any] = []
        self._active = False
        self._labels: torch.Tensor | None = None
        self._features: list[torch.Tensor] = []
        self._reset_epoch()

    # -- capture -----------------------------------------------------------------------------------
    def selfsup_before_run(self, runner: Any) -> None:
        model = runner.model
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ValueError(f"OnlineLinearProbe: the algorithm {type(model).__name__} has no .backbone module")
        self._handles = [model.register_forward_pre_hook(self._take_labels, with_kwargs=True),
                         backbone.register_forward_hook(self._take_features)]

    def _take_labels(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        if self._active and kwargs.get("mode", "train") == "train":
            label = kwargs.get("label")
            self._labels = label if isinstance(label, torch.Tensor) else None

    def _take_features(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._active:
            self._features.append(pool_output(output).detach())

    def selfsup_before_iter(self, runner: Any) -> None:
        self._active, self._labels, self._features = True, None, []

    # -- the classifier's step -----------------------------------------------------------------------
    def selfsup_after_iter(self, runner: Any, outputs: dict[str, Any]) -> None:
        self._active = False
        labels, features = self._labels, self._features
        self._labels, self._features = None, []
        if labels is None or not features:
            return
        rows = labels.numel()
        usable = [f for f in features if f.dim() == 2 and f.size(0) % rows == 0 and f.size(1) == features[0].size(1)]
        if not usable:
            return
        x = torch.cat(usable).float()
        y = labels.reshape(-1).to(x.device).long().repeat(x.size(0) // rows)
        keep = y >= 0
        if int(keep.sum()) == 0:
            return
        if int(y.max()) >= self.num_classes:
            raise ValueError(f"OnlineLinearProbe: a training label is {int(y.max())}, outside 0..{self.num_classes - 1}; "
                             "raise num_classes")
        x, y = x[keep], y[keep]
        classifier = self._classifier(x.size(1), x.device)
        with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            logits = classifier(x)
            loss = F.cross_entropy(logits, y)
            assert self.optimizer is not None
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if dist.is_distributed():
            for parameter in classifier.parameters():
                dist.all_reduce(parameter.grad, op="mean")
        self.optimizer.step()
        self._correct += (logits.detach().argmax(dim=1) == y).sum()
        self._seen += y.numel()
        self._loss_sum += loss.detach() * y.numel()

    def _classifier(self, dim: int, device: torch.device) -> nn.Linear:
        if self.classifier is None:
            generator = torch.Generator().manual_seed(self.seed)
            linear = nn.Linear(dim, self.num_classes, device="meta").to_empty(device="cpu")
            with torch.no_grad():
                linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
                linear.bias.zero_()
            self.classifier = linear.to(device)
            self.optimizer = torch.optim.SGD(self.classifier.parameters(), lr=self.lr, momentum=self.momentum,
                                             weight_decay=self.weight_decay)
        return self.classifier

    # -- reporting -------------------------------------------------------------------------------------
    def _reset_epoch(self) -> None:
        self._correct: Any = 0
        self._seen = 0
        self._loss_sum: Any = 0.0

    def selfsup_before_epoch(self, runner: Any) -> None:
        self._reset_epoch()

    def selfsup_after_epoch(self, runner: Any) -> None:
        seen = self._seen
        if seen == 0:
            return
        totals = torch.tensor([float(self._correct), float(self._loss_sum), float(seen)], dtype=torch.float64)
        dist.all_reduce(totals)
        correct, loss_sum, count = totals.tolist()
        runner.log_metrics({"mode": MODE, "epoch": runner.epoch + 1, "online_linear_top1": correct / count,
                            "online_linear_loss": loss_sum / count})
        if getattr(runner, "rank", 0) == 0 and getattr(runner, "logger", None) is not None:
            runner.logger.message(f"online linear probe, epoch {runner.epoch + 1}: top-1 {correct / count:.4f} "
                                  f"on {int(count)} training views, loss {loss_sum / count:.4f}")
        self._reset_epoch()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def selfsup_after_run(self, runner: Any) -> None:
        self._remove()

    def selfsup_on_exception(self, runner: Any, exception: BaseException) -> None:
        self._remove()


__all__ = ["OnlineLinearProbe"]
