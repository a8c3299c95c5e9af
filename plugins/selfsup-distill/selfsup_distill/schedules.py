"""The schedules of DINO and iBOT as plain functions of the iteration or epoch."""
from __future__ import annotations

import math


def cosine_schedule(it: int, total: int, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * it / total)) / 2``: ``start`` at iteration 0,
    ``end`` at ``total`` (DINO's ``cosine_scheduler`` without warm-up, read per iteration).

    Used for the weight decay (0.04 -> 0.4) and the teacher momentum (0.996 -> 1)."""
    if total <= 0:
        return float(end)
    return float(end + (start - end) * (1.0 + math.cos(math.pi * min(it, total) / total)) / 2.0)


def teacher_temperature(epoch: int, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """The teacher temperature of epoch ``epoch`` (0-based): linear from ``warmup_temp`` at epoch
    0 to ``temp`` at epoch ``warmup_epochs - 1`` (``numpy.linspace(warmup_temp, temp,
    warmup_epochs)``, as in DINO), then ``temp``. ``warmup_epochs = 0`` gives ``temp`` always."""
    if epoch >= warmup_epochs:
        return float(temp)
    if warmup_epochs == 1:
        return float(warmup_temp)
    return float(warmup_temp + (temp - warmup_temp) * epoch / (warmup_epochs - 1))


__all__ = ["cosine_schedule", "teacher_temperature"]
