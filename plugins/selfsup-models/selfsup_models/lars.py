"""LARS: layer-wise adaptive rate scaling for SGD (You, Gitman and Ginsburg, 2017).

The update is the one of MMSelfSup 0.x and SimCLR, per parameter tensor ``w`` with gradient
``g`` in a group with learning rate ``lr``, weight decay ``wd``, momentum ``m``, dampening
``d`` and trust coefficient ``eta``::

    trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)   if ||w|| > 0 and ||g|| > 0, else 1
    trust = 1                                          if the group has lars_exclude = True
    v     = (g + wd * w) * (lr * trust)
    buf   = v                      on the first step, else  buf = m * buf + (1 - d) * v
    w    -= buf                    (nesterov: w -= v + m * buf)

Note that the learning rate is inside the momentum buffer (as in the LARS paper's
Algorithm 1, SimCLR and MMSelfSup), unlike ``torch.optim.SGD`` which scales the buffer by
the current lr at each step; the two agree while the lr is constant.

The trust ratios are computed on the device (``torch.where``, no ``.item()``), so a step
never waits for the device; on accelerators the ``torch._foreach_*`` kernels update all
tensors of a group (per device and dtype) at once.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["LARS"]


class LARS(Optimizer):
    """SGD with layer-wise adaptive rate scaling (MMSelfSup 0.x ``LARS``).

    Args:
        params: parameters or parameter-group dicts. A group may carry ``lars_exclude=True``
            to skip the trust ratio (plain SGD with weight decay for biases and norms).
        lr: learning rate.
        momentum: momentum factor ``m`` (0 disables the buffer).
        weight_decay: L2 penalty ``wd`` added to the gradient before the trust ratio.
        dampening: dampening ``d`` of the momentum, as in ``torch.optim.SGD``.
        eta: trust coefficient of the layer-wise ratio.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        eps: added to the denominator of the trust ratio.
        foreach: use the multi-tensor ``torch._foreach_*`` kernels for all tensors of a
            group at once (None: on GPUs and other accelerators, not on the CPU, where the
            per-tensor loop is faster, nor inside ``torch.compile``).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        dampening: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        eps: float = 1e-8,
        foreach: Optional[bool] = None,
    ) -> None:
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("eta", eta), ("eps", eps)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LARS: {name} must be a number >= 0, got {value!r}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("LARS: nesterov = true needs momentum > 0 and dampening = 0")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        eta=eta, nesterov=nesterov, eps=eps, lars_exclude=False, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("lars_exclude", False)
            group.setdefault("eps", 1e-8)
            group.setdefault("foreach", None)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Update every parameter that has a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
            for p in params:
                buckets[(p.device, p.dtype)].append(p)
            for (device, _), bucket in buckets.items():
                foreach = group["foreach"]
                if foreach is None:  # as torch's optimizers: multi-tensor kernels on accelerators
                    foreach = device.type not in ("cpu", "meta") and not torch.compiler.is_compiling()
                if foreach:
                    self._update_foreach(group, bucket)
                else:
                    for p in bucket:
                        self._update_foreach(group, [p], single=True)
        return loss

    def _update_foreach(self, group: dict[str, Any], params: list[Tensor], single: bool = False) -> None:
        """One LARS step for ``params`` (one device and dtype) of ``group``."""
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        dampening, nesterov = group["dampening"], group["nesterov"]
        grads = [p.grad for p in params]
        # v = g + wd * w (a new tensor: the gradients are left untouched)
        if wd != 0:
            updates = list(torch._foreach_add(grads, params, alpha=wd))
        else:
            updates = [g.clone() for g in grads]
        if group["lars_exclude"]:
            torch._foreach_mul_(updates, lr)
        else:
            if single:
                w_norm = torch.linalg.vector_norm(params[0]).unsqueeze(0)
                g_norm = torch.linalg.vector_norm(grads[0]).unsqueeze(0)
            else:
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
            trust = group["eta"] * w_norm / (g_norm + wd * w_norm + group["eps"])
            trust = torch.where((w_norm > 0) & (g_norm > 0), trust, torch.ones_like(trust))
            scale = trust * lr
            if single:
                updates[0].mul_(scale[0])
            else:
                torch._foreach_mul_(updates, list(scale.unbind(0)))
        if momentum != 0:
            fresh, old_bufs, old_updates = [], [], []
            for p, v in zip(params, updates):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = v.clone()
                    fresh.append(p)
                else:
                    old_bufs.append(state["momentum_buffer"])
                    old_updates.append(v)
            if old_bufs:
                torch._foreach_mul_(old_bufs, momentum)
                torch._foreach_add_(old_bufs, old_updates, alpha=1 - dampening)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            if nesterov:
                torch._foreach_add_(updates, bufs, alpha=momentum)
            else:
                updates = bufs
        torch._foreach_sub_(params, updates)
