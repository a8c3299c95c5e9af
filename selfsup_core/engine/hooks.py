"""Trainer hooks shipped with the core (registered in ``selfsup.hooks`` like any plugin's).

A trainer hook is an object with ``selfsup_*`` lifecycle methods (see
:mod:`selfsup_core.hookspecs`); a ``[[hooks]]`` table builds it and the trainer registers
it on the run's plugin manager. ``state_dict()``/``load_state_dict()``, when present, are
saved in and restored from checkpoints.
"""
from __future__ import annotations

from typing import Any

from ..errors import SelfSupError
from .schedules import cosine_momentum


class MomentumUpdate:
    """Cosine-scheduled EMA update of an algorithm's target (momentum) network.

    Before every iteration the algorithm's ``momentum`` is set to
    ``end_momentum - (end_momentum - base) * (cos(pi * iter / max_iters) + 1) / 2`` where
    ``base`` is the algorithm's ``base_momentum``; after every ``update_interval``-th
    optimizer step the trainer calls the algorithm's ``momentum_update()``, which blends the
    online weights into the target as ``target = m * target + (1 - m) * online``
    (BYOL, MoCo v3, DenseCL ...).

    Args:
        end_momentum: the momentum reached at the last iteration (1.0 in BYOL).
        update_interval: optimizer steps between updates (1: every step).
    """

    def __init__(self, end_momentum: float = 1.0, update_interval: int = 1) -> None:
        if not 0.0 <= end_momentum <= 1.0:
            raise ValueError(f"MomentumUpdate: end_momentum must be in [0, 1], got {end_momentum}")
        if update_interval < 1:
            raise ValueError(f"MomentumUpdate: update_interval must be >= 1, got {update_interval}")
        self.end_momentum = float(end_momentum)
        self.update_interval = int(update_interval)
        self._steps = 0

    @staticmethod
    def _algorithm(runner: Any) -> Any:
        model = runner.model
        if not callable(getattr(model, "momentum_update", None)) or not hasattr(model, "base_momentum"):
            raise SelfSupError(
                f"MomentumUpdate: the algorithm {type(model).__name__} has no momentum_update() method and "
                "base_momentum attribute; remove the MomentumUpdate hook from [[hooks]]")
        return model

    def selfsup_before_run(self, runner: Any) -> None:
        self._algorithm(runner)

    def selfsup_before_iter(self, runner: Any) -> None:  # the algorithm was checked in before_run
        model = runner.model
        model.momentum = cosine_momentum(runner.iter, runner.max_iters, model.base_momentum, self.end_momentum)

    def selfsup_after_iter(self, runner: Any, outputs: dict[str, Any]) -> None:
        if not runner.is_update_step:
            return
        self._steps += 1
        if self._steps % self.update_interval == 0:
            runner.model.momentum_update()

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = int(state["steps"])


__all__ = ["MomentumUpdate", "cosine_momentum"]
