"""DINOHook: DINO's and iBOT's per-iteration schedules and gradient handling."""
from __future__ import annotations

from typing import Any

import torch
from selfsup_core.api import SelfSupError

from .schedules import cosine_schedule


@torch.no_grad()
def clip_per_parameter_(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """DINO's ``clip_gradients``: each parameter tensor's gradient with L2 norm above
    ``max_norm`` is scaled by ``max_norm / (norm + 1e-6)``; the others are left alone.

    Called by :class:`DINOHook` after the backward pass of an update step. Runs as two fused
    multi-tensor calls with no host synchronisation. Returns the norms before clipping, one per
    parameter that has a gradient (an empty tensor when none has)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads, 2)])
    coefs = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    torch._foreach_mul_(grads, [c.to(g.dtype) for c, g in zip(coefs.unbind(), grads)])
    return norms


class DINOHook:
    """Trainer hook of DINO and iBOT (add it to ``[[hooks]]`` with the core's ``MomentumUpdate``).

    - before every epoch: ``model.epoch = runner.epoch`` (the teacher-temperature warm-up);
    - before every iteration: the weight decay of every param group with a non-zero decay
      follows DINO's cosine from its configured value (``[optimizer] weight_decay``, 0.04) to
      ``weight_decay_end`` (0.4) at the last iteration, scaled per group (groups with
      ``decay_mult`` keep their ratio; the norm/bias groups stay at 0);
    - after every backward pass of an update step (gradients already unscaled, before the
      optimizer step): each parameter tensor's gradient is clipped to L2 norm ``clip_grad``
      on its own (DINO's per-parameter clipping; 0 disables), then, during the first
      ``freeze_last_layer`` epochs, the gradients of the head's last layer are cancelled
      (set to ``None``: the optimizer leaves it unchanged, weight decay included).

    Args:
        clip_grad: the per-parameter gradient norm bound (3.0; 0 = no clipping).
        freeze_last_layer: epochs during which the last layer is frozen (1).
        weight_decay_end: the weight decay at the last iteration (0.4; ``None`` = constant).
    """

    def __init__(self, clip_grad: float = 3.0, freeze_last_layer: int = 1, weight_decay_end: float | None = 0.4) -> None:
        if clip_grad < 0:
            raise ValueError(f"DINOHook: clip_grad must be >= 0 (0 disables it), got {clip_grad}")
        if freeze_last_layer < 0:
            raise ValueError(f"DINOHook: freeze_last_layer must be >= 0 epochs, got {freeze_last_layer}")
        if weight_decay_end is not None and weight_decay_end < 0:
            raise ValueError(f"DINOHook: weight_decay_end must be >= 0, got {weight_decay_end}")
        self.clip_grad = float(clip_grad)
        self.freeze_last_layer = int(freeze_last_layer)
        self.weight_decay_end = None if weight_decay_end is None else float(weight_decay_end)
        self._last_layer: list[torch.nn.Parameter] = []
        self._params: list[torch.nn.Parameter] = []
        self._base_decay = 0.0

    def selfsup_before_run(self, runner: Any) -> None:
        model = runner.model
        head = getattr(model, "head", None)
        if not hasattr(model, "epoch") or head is None or not hasattr(head, "last_layer"):
            raise SelfSupError(f"DINOHook: the algorithm {type(model).__name__} is not DINO or iBOT (no head.last_layer); "
                               "remove the DINOHook from [[hooks]]")
        self._last_layer = [p for p in head.last_layer.parameters() if p.requires_grad]
        self._params = [p for p in model.parameters() if p.requires_grad]
        for group in runner.optimizer.param_groups:
            group.setdefault("initial_weight_decay", float(group.get("weight_decay", 0.0)))
        self._base_decay = max((g["initial_weight_decay"] for g in runner.optimizer.param_groups), default=0.0)
        model.epoch = runner.epoch

    def weight_decay_at(self, it: int, max_iters: int) -> float:
        """The scheduled weight decay of a group configured with the optimizer's decay."""
        if self.weight_decay_end is None:
            return self._base_decay
        return cosine_schedule(it, max_iters, self._base_decay, self.weight_decay_end)

    def selfsup_before_epoch(self, runner: Any) -> None:
        runner.model.epoch = runner.epoch

    def selfsup_before_iter(self, runner: Any) -> None:
        if self.weight_decay_end is None or self._base_decay <= 0:
            return
        scale = self.weight_decay_at(runner.iter, runner.max_iters) / self._base_decay
        for group in runner.optimizer.param_groups:
            group["weight_decay"] = group["initial_weight_decay"] * scale

    def selfsup_after_backward(self, runner: Any) -> None:
        if not runner.is_update_step:
            return
        if self.clip_grad > 0:
            clip_per_parameter_(self._params, self.clip_grad)
        if runner.epoch < self.freeze_last_layer:
            for p in self._last_layer:
                p.grad = None


__all__ = ["DINOHook", "clip_per_parameter_"]
