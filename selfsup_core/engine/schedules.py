"""Learning-rate schedules from the ``[lr_config]`` table (MMCV vocabulary and formulas),
and momentum schedules for EMA teachers.

::

    [lr_config]
    policy = "CosineAnnealing"   # "CosineAnnealing", "StepFixCosineAnnealing", "step", "Fixed" / "constant", "Poly", "Exp"
    min_lr = 0.0                 # or min_lr_ratio = 1e-3 (a fraction of each group's base lr)
    by_epoch = true              # true: the lr changes once per epoch; false: every iteration
    warmup = "linear"            # "linear", "constant", "exp"; absent, "none" or false: no warmup
    warmup_iters = 10
    warmup_ratio = 1e-4
    warmup_by_epoch = true       # warmup_iters counts epochs

Each policy is a registered :class:`~selfsup_core.engine.lr_policies.LrPolicy` (entry-point
group ``selfsup.lr_policies``; ``selfsup-run list lr_policies``): its keys and formula are
documented there (``progress`` is the epoch with ``by_epoch = true``, else the iteration;
``max_progress`` is ``max_epochs`` or ``max_epochs * iters_per_epoch``).

Warmup (MMCV ``get_warmup_lr``) applies to iterations ``i < W``, with ``W = warmup_iters``
or ``warmup_iters * iters_per_epoch`` when ``warmup_by_epoch``, and scales the *regular*
lr of that iteration (the one the policy gives without warmup), always by iteration:

* ``constant``: ``regular * warmup_ratio``;
* ``linear``: ``regular * (1 - (1 - i / W) * (1 - warmup_ratio))``;
* ``exp``: ``regular * warmup_ratio ** (1 - i / W)``.

The schedule is a pure function of the global iteration (0-based), so its state is only
the config and the last iteration it was asked for; the base lr of each param group is
``group["initial_lr"]`` (see :mod:`selfsup_core.engine.optim`).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import torch

from ..build import describe_value
from ..config import Config
from ..errors import Problems, SelfSupError, did_you_mean
from .lr_policies import COMMON_KEYS, WARMUPS, LrPolicy, PolicyTable, annealing_cos, find_policy

__all__ = [
    "LrSchedule",
    "MomentumSchedule",
    "annealing_cos",
    "build_lr_schedule",
    "cosine_momentum",
]



class LrSchedule:
    """An MMCV learning-rate policy with optional warmup, as a function of the iteration.

    Build it with :func:`build_lr_schedule`. The trainer calls :meth:`step` with the global
    iteration (0-based) before the optimizer step of that iteration.

    Args:
        optimizer: the optimizer whose groups are updated; a group without ``initial_lr``
            gets its current ``lr`` as ``initial_lr`` here (MMCV's ``before_run``).
        iters_per_epoch: iterations in one epoch (>= 1).
        max_epochs: epochs of the run (>= 1).
        policy: a policy name (looked up with :func:`~selfsup_core.engine.lr_policies.find_policy`)
            or a policy object (:class:`~selfsup_core.engine.lr_policies.LrPolicy`).
        by_epoch, warmup, warmup_iters, warmup_ratio, warmup_by_epoch: as in ``[lr_config]``.
        options: the policy's own keys (``min_lr``, ``step``, ``gamma`` ...).
    """

    def __init__(
        self,
        optimizer: Optional[torch.optim.Optimizer],
        *,
        iters_per_epoch: int,
        max_epochs: int,
        policy: str | LrPolicy = "Fixed",
        by_epoch: bool = True,
        warmup: Optional[str] = None,
        warmup_iters: int = 0,
        warmup_ratio: float = 0.1,
        warmup_by_epoch: bool = False,
        options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if not isinstance(iters_per_epoch, int) or iters_per_epoch < 1:
            raise ValueError(f"LrSchedule: iters_per_epoch must be an integer >= 1, got {iters_per_epoch!r}")
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(f"LrSchedule: max_epochs must be an integer >= 1, got {max_epochs!r}")
        self.optimizer = optimizer
        self.iters_per_epoch = iters_per_epoch
        self.max_epochs = max_epochs
        self.policy_object = find_policy(policy) if isinstance(policy, str) else policy
        self.policy = policy = self.policy_object.name
        self.by_epoch = by_epoch
        self.warmup = warmup
        self.warmup_ratio = float(warmup_ratio)
        self.warmup_by_epoch = warmup_by_epoch
        self.warmup_iters = warmup_iters * iters_per_epoch if warmup_by_epoch else warmup_iters
        self.options = dict(options or {})
        self.max_iters = max_epochs * iters_per_epoch
        self.last_iteration = -1
        self._settings = dict(policy=policy, by_epoch=by_epoch, warmup=warmup, warmup_iters=warmup_iters,
                              warmup_ratio=warmup_ratio, warmup_by_epoch=warmup_by_epoch,
                              iters_per_epoch=iters_per_epoch, max_epochs=max_epochs, options=dict(self.options))
        if optimizer is not None:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    # -- pure functions of the iteration ----------------------------------------------------
    def regular_lr(self, iteration: int, base_lr: float) -> float:
        """The policy's lr at ``iteration`` without warmup."""
        if self.by_epoch:
            progress, max_progress = iteration // self.iters_per_epoch, self.max_epochs
        else:
            progress, max_progress = iteration, self.max_iters
        return self.policy_object.regular_lr(self, progress, max_progress, base_lr)

    def lr_at(self, iteration: int, base_lr: float) -> float:
        """The lr at global ``iteration`` (0-based) of a group whose base lr is ``base_lr``."""
        regular = self.regular_lr(iteration, base_lr)
        if self.warmup is None or iteration >= self.warmup_iters:
            return regular
        return self.policy_object.warmup_lr(self, iteration, regular)

    def factor(self, iteration: int) -> float:
        """``lr_at(iteration, 1.0)``: the multiplier of the base lr (exact unless an absolute
        ``min_lr`` is set, in which case the multiplier depends on the base lr)."""
        return self.lr_at(iteration, 1.0)

    def lrs_at(self, iteration: int) -> list[float]:
        """The lr of every param group of the optimizer at ``iteration``."""
        if self.optimizer is None:
            return []
        return [self.lr_at(iteration, group["initial_lr"]) for group in self.optimizer.param_groups]

    # -- stateful use -----------------------------------------------------------------------
    def step(self, iteration: int) -> None:
        """Set every group's ``lr`` for global ``iteration`` (call before the optimizer step)."""
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                base = group.setdefault("initial_lr", group["lr"])
                group["lr"] = self.lr_at(iteration, base)
        self.last_iteration = iteration

    def state_dict(self) -> dict[str, Any]:
        """The settings and the last iteration (plain Python values; no tensors)."""
        return {"settings": dict(self._settings, options=dict(self._settings["options"])),
                "last_iteration": self.last_iteration}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the last iteration; a schedule saved with other settings is warned about
        (the current config wins: the lr stays a function of the iteration)."""
        if "last_iteration" not in state:
            raise KeyError("LrSchedule.load_state_dict: the state has no 'last_iteration'")
        saved = state.get("settings")
        if saved is not None and saved != self._settings:
            changed = sorted(k for k in set(saved) | set(self._settings) if saved.get(k) != self._settings.get(k))
            warnings.warn(f"the lr schedule of the checkpoint differs from the config in {', '.join(changed)}; "
                          "using the config's", stacklevel=2)
        self.last_iteration = int(state["last_iteration"])

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.options.items())
        warm = f", warmup={self.warmup!r}, warmup_iters={self.warmup_iters}, warmup_ratio={self.warmup_ratio}" \
            if self.warmup else ""
        return f"LrSchedule(policy={self.policy!r}, by_epoch={self.by_epoch}{extra}{warm})"


def warmup_warning(schedule: Any, max_iters: int) -> str | None:
    """One line when the warm-up does not end before the run does (a shrunk schedule:
    ``runner.max_epochs`` lowered, warm-up kept): the lr never reaches its peak. None
    otherwise. Called by the trainer once the schedule is built."""
    warmup_iters = int(getattr(schedule, "warmup_iters", 0) or 0)
    if not getattr(schedule, "warmup", None) or max_iters <= 0 or warmup_iters < max_iters:
        return None
    peak = max(schedule.lr_at(i, 1.0) for i in range(0, max_iters, max(1, max_iters // 200)))
    return (f"warning: lr_config: the warm-up ({warmup_iters} iterations) is not shorter than the whole run "
            f"({max_iters} iterations): the lr reaches only {peak:.1%} of its configured value; shorten "
            "lr_config.warmup_iters (or warmup_by_epoch) for this run length")


def build_lr_schedule(
    cfg: Optional[Mapping[str, Any]],
    optimizer: Optional[torch.optim.Optimizer],
    *,
    iters_per_epoch: int,
    max_epochs: int,
    config: Optional[Config] = None,
    path: tuple = ("lr_config",),
    registries: Any = None,
) -> LrSchedule:
    """Build the schedule the ``[lr_config]`` table ``cfg`` describes (None: constant lr).

    Args:
        cfg: the ``[lr_config]`` table (see the module docstring), or None.
        optimizer: whose param groups :meth:`LrSchedule.step` updates.
        iters_per_epoch: iterations per epoch (>= 1); max_epochs: epochs of the run (>= 1).
        config: the whole config, only to name the file of a bad key; path: where ``cfg`` is.
        registries: where policies are looked up (None: the registries in use).

    Raises:
        ConfigError: unknown policy or key (with a did-you-mean), or a bad value; each
            problem names the file and the dotted key.
    """
    if cfg is None:
        return LrSchedule(optimizer, iters_per_epoch=iters_per_epoch, max_epochs=max_epochs)
    problems = Problems(config, path)
    if not isinstance(cfg, Mapping):
        problems.add((), f"must be a table with a 'policy', got {describe_value(cfg)}")
        problems.raise_if_any()
    try:
        policy = find_policy(cfg.get("policy", "Fixed"), registries)
    except SelfSupError as exc:
        problems.add(("policy",), str(exc))
        problems.raise_if_any()
    table = PolicyTable(cfg, problems)
    _check_keys(table, policy)
    common = _read_common(table, iters_per_epoch=iters_per_epoch, max_epochs=max_epochs)
    options = policy.read(table, common)
    problems.raise_if_any()
    return LrSchedule(optimizer, iters_per_epoch=iters_per_epoch, max_epochs=max_epochs, policy=policy,
                      by_epoch=common["by_epoch"], warmup=common["warmup"], warmup_iters=common["warmup_iters"],
                      warmup_ratio=common["warmup_ratio"], warmup_by_epoch=common["warmup_by_epoch"],
                      options=options)


def _check_keys(table: PolicyTable, policy: LrPolicy) -> None:
    """One problem per key of ``[lr_config]`` that neither every policy nor ``policy`` reads."""
    allowed = (*COMMON_KEYS, *policy.keys)
    for key in table.table:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"; it takes {', '.join(allowed)}"
            table.problem((key,), f"unknown key of lr policy {policy.name}{hint}")


def _read_common(table: PolicyTable, *, iters_per_epoch: int, max_epochs: int) -> dict[str, Any]:
    """The checked keys every policy reads (``by_epoch`` and the warmup), plus the run length,
    as given to :meth:`LrPolicy.read`."""
    by_epoch = table.flag("by_epoch", True)
    warmup_by_epoch = table.flag("warmup_by_epoch", False)
    warmup = table.get("warmup")
    if warmup is False or (isinstance(warmup, str) and warmup.lower() in ("none", "")):
        warmup = None
    if warmup is not None and warmup not in WARMUPS:
        hint = did_you_mean(str(warmup), WARMUPS) or '; use "linear", "constant", "exp" or leave it out'
        table.problem(("warmup",), f"unknown warmup {warmup!r}{hint}")
        warmup = None
    warmup_iters = table.number("warmup_iters", 0, integer=True, positive=warmup is not None)
    warmup_ratio = table.number("warmup_ratio", 0.1, positive=True)
    if warmup is not None and "warmup_iters" not in table:
        table.problem(("warmup_iters",), f"warmup = {warmup!r} needs warmup_iters (> 0)")
    if _is_num(warmup_ratio) and warmup_ratio > 1:
        table.problem(("warmup_ratio",), f"must be in (0, 1], got {warmup_ratio!r}")
    return {"by_epoch": by_epoch, "warmup_by_epoch": warmup_by_epoch, "warmup": warmup,
            "warmup_iters": warmup_iters, "warmup_ratio": warmup_ratio,
            "iters_per_epoch": iters_per_epoch, "max_epochs": max_epochs}


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- momentum ---------------------------------------------------------------------------------
def cosine_momentum(iteration: int, max_iters: int, base_momentum: float, end_momentum: float = 1.0) -> float:
    """EMA momentum at ``iteration`` of ``max_iters`` (BYOL):
    ``end - (end - base) * (cos(pi * iteration / max_iters) + 1) / 2``; ``base`` at 0, ``end`` at the end."""
    return end_momentum - (end_momentum - base_momentum) * (math.cos(math.pi * iteration / max_iters) + 1) / 2


class MomentumSchedule:
    """Cosine EMA-momentum schedule from ``base_momentum`` to ``end_momentum`` over ``max_iters``.

    Call it with the global iteration: ``m = schedule(iteration)``. With
    ``cosine = False`` the momentum stays ``base_momentum``.
    """

    def __init__(self, base_momentum: float, end_momentum: float = 1.0, *, max_iters: int, cosine: bool = True) -> None:
        if not 0.0 <= base_momentum <= 1.0 or not 0.0 <= end_momentum <= 1.0:
            raise ValueError("MomentumSchedule: base_momentum and end_momentum must be in [0, 1], "
                             f"got {base_momentum!r} and {end_momentum!r}")
        if max_iters < 1:
            raise ValueError(f"MomentumSchedule: max_iters must be >= 1, got {max_iters!r}")
        self.base_momentum, self.end_momentum = float(base_momentum), float(end_momentum)
        self.max_iters, self.cosine = max_iters, cosine

    def __call__(self, iteration: int) -> float:
        if not self.cosine:
            return self.base_momentum
        return cosine_momentum(iteration, self.max_iters, self.base_momentum, self.end_momentum)
