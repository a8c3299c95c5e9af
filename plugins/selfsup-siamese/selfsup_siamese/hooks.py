"""Trainer hooks of the siamese methods (``selfsup.hooks`` entry points)."""
from __future__ import annotations

from typing import Any, Optional

from selfsup_core.api import SelfSupError


class SimSiamHook:
    """Keep the learning rate of SimSiam's predictor fixed (the paper's ``fix_pred_lr``;
    MMSelfSup 0.x's ``SimSiamHook``).

    The lr schedule sets every param group's ``lr`` before the optimizer step of an
    iteration; this hook then, right before every optimizer step (an optimizer step
    pre-hook, so after the schedule and whatever the accumulation), sets the ``lr`` of the
    param groups marked ``fix_lr`` back to ``lr`` (default: the group's base lr,
    ``initial_lr`` = the optimizer's lr times the group's ``lr_mult``). Mark the predictor's
    parameters with a paramwise option::

        [optimizer.paramwise_options]
        "head\\.predictor" = { fix_lr = true }

        [[hooks]]
        type = "SimSiamHook"

    Args:
        fix_pred_lr: keep the marked groups' lr fixed (false: the hook does nothing, every
            group follows the schedule).
        lr: the fixed lr; ``None`` (default) keeps each marked group at its base lr.
    """

    def __init__(self, fix_pred_lr: bool = True, lr: Optional[float] = None) -> None:
        if lr is not None and lr <= 0:
            raise ValueError(f"SimSiamHook: lr must be > 0 (or left out for the base lr), got {lr}")
        self.fix_pred_lr = bool(fix_pred_lr)
        self.lr = None if lr is None else float(lr)
        self._handle: Any = None

    def selfsup_before_run(self, runner: Any) -> None:
        if not self.fix_pred_lr:
            return
        optimizer = runner.optimizer
        if not any(group.get("fix_lr") for group in optimizer.param_groups):
            raise SelfSupError(
                "SimSiamHook: no param group has fix_lr = true; add [optimizer.paramwise_options] "
                "\"head\\\\.predictor\" = {fix_lr = true} (or set fix_pred_lr = false)")
        self._handle = optimizer.register_step_pre_hook(self._fix)
        self._fix(optimizer)

    def _fix(self, optimizer: Any, *args: Any) -> None:
        for group in optimizer.param_groups:
            if group.get("fix_lr"):
                group["lr"] = self.lr if self.lr is not None else group["initial_lr"]

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def selfsup_after_run(self, runner: Any) -> None:
        self._remove()

    def selfsup_on_exception(self, runner: Any, exception: BaseException) -> None:
        self._remove()


__all__ = ["SimSiamHook"]
