"""Learning-rate policies: one small registered object per ``[lr_config] policy``.

Each policy is a class registered under the entry-point group ``selfsup.lr_policies`` (the
core registers its built-ins in its own ``pyproject.toml``, exactly as a plugin would; a
plugin adds a policy by name the same way). A policy names the keys of ``[lr_config]`` it
reads besides :data:`COMMON_KEYS`, checks them in :meth:`LrPolicy.read` and gives the lr of
an iteration in :meth:`LrPolicy.regular_lr`; :func:`selfsup_core.engine.schedules.build_lr_schedule`
looks the policy up, checks the common keys and builds the schedule. No torch here, so the
config migrator can read the vocabulary (:data:`POLICIES`, :data:`POLICY_KEYS`).

A third-party policy::

    # pyproject.toml: [project.entry-points."selfsup.lr_policies"] Linear = "acme.lr:Linear"
    from selfsup_core.api import LrPolicy

    class Linear(LrPolicy):
        name = "Linear"
        keys = ("end_lr",)

        def read(self, table, common):
            return {"end_lr": table.number("end_lr", 0.0)}

        def regular_lr(self, schedule, progress, max_progress, base_lr):
            end = schedule.options["end_lr"]
            return base_lr + (end - base_lr) * progress / max_progress
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from ..errors import Problems, SelfSupError, did_you_mean

#: Keys every policy reads.
COMMON_KEYS = ("policy", "by_epoch", "warmup", "warmup_iters", "warmup_ratio", "warmup_by_epoch")
WARMUPS = ("linear", "constant", "exp")

__all__ = [
    "COMMON_KEYS",
    "POLICIES",
    "POLICY_KEYS",
    "WARMUPS",
    "LrPolicy",
    "PolicyTable",
    "find_policy",
    "installed_policies",
]


def annealing_cos(start: float, end: float, factor: float, weight: float = 1.0) -> float:
    """Cosine from ``start`` (``factor = 0``) to ``end`` (``factor = 1``), MMCV's formula."""
    return end + 0.5 * weight * (start - end) * (math.cos(math.pi * factor) + 1)


class PolicyTable:
    """The ``[lr_config]`` table as a policy reads it: each value checked as it is read, each
    problem collected (with file and key) in ``problems``. Given to :meth:`LrPolicy.read`."""

    def __init__(self, table: Mapping[str, Any], problems: Problems) -> None:
        self.table, self.problems = dict(table), problems

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def get(self, key: str, default: Any = None) -> Any:
        """The raw value of ``key`` (``default`` when absent)."""
        return self.table.get(key, default)

    def problem(self, keys: tuple, message: str) -> None:
        """Collect ``message`` about ``lr_config.<keys>`` (``keys = ()``: the table)."""
        self.problems.add(keys, message)

    def number(self, key: str, default: Any, *, positive: bool = False, integer: bool = False) -> Any:
        """The value of ``key`` (``default`` when absent), checked to be a number (an integer
        with ``integer``) ``>= 0`` (``> 0`` with ``positive``); None stays None."""
        from ..build import describe_value

        value = self.table.get(key, default)
        if value is None:
            return None
        kinds = int if integer else (int, float)
        if not isinstance(value, kinds) or isinstance(value, bool):
            self.problem((key,), f"must be {'an integer' if integer else 'a number'}, got {describe_value(value)}")
        elif value < 0 or (positive and value == 0):
            self.problem((key,), f"must be {'> 0' if positive else '>= 0'}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        """The boolean value of ``key`` (``default`` when absent or not a boolean)."""
        from ..build import describe_value

        value = self.table.get(key, default)
        if not isinstance(value, bool):
            self.problem((key,), f"must be true or false, got {describe_value(value)}")
            return default
        return value


class LrPolicy:
    """One learning-rate policy. Subclasses set :attr:`name` and :attr:`keys` and implement
    :meth:`regular_lr`; :meth:`read` and :meth:`warmup_lr` have defaults.

    ``schedule`` (the :class:`~selfsup_core.engine.schedules.LrSchedule` being evaluated)
    gives ``options`` (what :meth:`read` returned), ``by_epoch``, ``iters_per_epoch``,
    ``max_epochs``, ``warmup``, ``warmup_iters`` (in iterations) and ``warmup_ratio``.
    """

    #: The canonical name, used in messages and saved in checkpoints.
    name: ClassVar[str] = ""
    #: The keys of ``[lr_config]`` this policy reads besides :data:`COMMON_KEYS`.
    keys: ClassVar[tuple[str, ...]] = ()

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        """Check this policy's keys in ``table`` (problems go to ``table.problem``) and
        return its options. ``common``: the checked common settings (``by_epoch``,
        ``warmup``, ``warmup_iters``, ``warmup_by_epoch``, ``iters_per_epoch``,
        ``max_epochs``). Called once, when the schedule is built."""
        return {}

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        """The lr without warmup at ``progress`` (the epoch with ``by_epoch``, else the
        iteration) of ``max_progress``, for a group whose base lr is ``base_lr``."""
        raise NotImplementedError

    def warmup_lr(self, schedule: Any, iteration: int, regular: float) -> float:
        """The lr at ``iteration`` inside the warmup (MMCV ``get_warmup_lr``), given the
        ``regular`` lr of that iteration."""
        if schedule.warmup == "constant":
            return regular * schedule.warmup_ratio
        if schedule.warmup == "linear":
            k = (1 - iteration / schedule.warmup_iters) * (1 - schedule.warmup_ratio)
            return regular * (1 - k)
        return regular * schedule.warmup_ratio ** (1 - iteration / schedule.warmup_iters)  # exp


class Fixed(LrPolicy):
    """``Fixed`` / ``constant``: the base lr."""

    name = "Fixed"

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        return base_lr


class CosineAnnealing(LrPolicy):
    """``target + 0.5 * (base - target) * (1 + cos(pi * progress / max_progress))`` with
    ``target = min_lr`` or ``base * min_lr_ratio`` (neither: ``min_lr = 0``)."""

    name = "CosineAnnealing"
    keys = ("min_lr", "min_lr_ratio")

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        min_lr = table.number("min_lr", None)
        ratio = table.number("min_lr_ratio", None)
        if min_lr is not None and ratio is not None:
            table.problem(("min_lr_ratio",), "give min_lr or min_lr_ratio, not both")
        if min_lr is None and ratio is None:
            return {"min_lr": 0.0}
        return {"min_lr": min_lr} if ratio is None else {"min_lr_ratio": ratio}

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        o = schedule.options
        target = base_lr * o["min_lr_ratio"] if o.get("min_lr_ratio") is not None else o.get("min_lr", 0.0)
        return annealing_cos(base_lr, target, progress / max_progress)


class StepFixCosineAnnealing(CosineAnnealing):
    """MMSelfSup 0.x's ``StepFixCosineAnnealingLrUpdaterHook`` (keys of ``CosineAnnealing``):
    the cosine starts when the warmup ends. With a warmup of ``W`` iterations
    (``E = W // iters_per_epoch`` epochs with ``by_epoch``), ``progress`` and ``max_progress``
    both lose ``W`` (or ``E``), so the regular lr inside the warmup is the cosine at a
    negative progress (as in 0.x); without a warmup it is ``CosineAnnealing``. Its ``linear``
    warmup ignores ``warmup_ratio`` (``regular * i / W``); ``constant`` and ``exp`` use it."""

    name = "StepFixCosineAnnealing"

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        options = super().read(table, common)
        warmup_iters, per_epoch, max_epochs = common["warmup_iters"], common["iters_per_epoch"], common["max_epochs"]
        is_number = isinstance(warmup_iters, (int, float)) and not isinstance(warmup_iters, bool)
        if common["warmup"] is not None and is_number:
            warm = warmup_iters * per_epoch if common["warmup_by_epoch"] else warmup_iters
            if common["by_epoch"] and warm // per_epoch >= max_epochs or warm >= max_epochs * per_epoch:
                table.problem(("warmup_iters",), "the warmup must end before the run does (StepFixCosineAnnealing "
                              "anneals over the rest); lower warmup_iters")
        return options

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        if schedule.warmup is not None:
            shift = schedule.warmup_iters // schedule.iters_per_epoch if schedule.by_epoch else schedule.warmup_iters
            progress, max_progress = progress - shift, max_progress - shift
        return super().regular_lr(schedule, progress, max_progress, base_lr)

    def warmup_lr(self, schedule: Any, iteration: int, regular: float) -> float:
        if schedule.warmup == "linear":
            return regular * (iteration / schedule.warmup_iters)  # 0.x ignores warmup_ratio here
        return super().warmup_lr(schedule, iteration, regular)


class Step(LrPolicy):
    """``step`` = a list of epochs (iterations with ``by_epoch = false``) or one interval,
    ``gamma = 0.1``, optional ``min_lr`` floor: ``base * gamma ** k``, ``k`` the number of
    listed steps ``<= progress`` (or ``progress // step``)."""

    name = "Step"
    keys = ("step", "gamma", "min_lr")

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        from ..build import describe_value

        step = table.get("step")
        if step is None:
            table.problem((), "lr policy step needs step = [epochs...] or step = <interval>")
        elif isinstance(step, list):
            if not step or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in step):
                table.problem(("step",), f"must be a non-empty list of integers > 0, got {describe_value(step)}")
            elif step != sorted(step):
                table.problem(("step",), f"must be in increasing order, got {step!r}")
        elif not isinstance(step, int) or isinstance(step, bool) or step <= 0:
            table.problem(("step",), f"must be an integer > 0 or a list of them, got {describe_value(step)}")
        options = {"step": list(step) if isinstance(step, list) else step, "gamma": table.number("gamma", 0.1)}
        if table.get("min_lr") is not None:
            options["min_lr"] = table.number("min_lr", None)
        return options

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        o = schedule.options
        step = o["step"]
        if isinstance(step, int):
            exponent = progress // step
        else:
            exponent = next((i for i, s in enumerate(step) if progress < s), len(step))
        lr = base_lr * o.get("gamma", 0.1) ** exponent
        return max(lr, o["min_lr"]) if o.get("min_lr") is not None else lr


class Poly(LrPolicy):
    """``power = 1.0``, ``min_lr = 0.0``: ``(base - min_lr) * (1 - progress / max_progress) ** power + min_lr``."""

    name = "Poly"
    keys = ("power", "min_lr")

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        return {"power": table.number("power", 1.0), "min_lr": table.number("min_lr", 0.0)}

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        min_lr = schedule.options.get("min_lr", 0.0)
        return (base_lr - min_lr) * (1 - progress / max_progress) ** schedule.options.get("power", 1.0) + min_lr


class Exp(LrPolicy):
    """``gamma`` (required): ``base * gamma ** progress``."""

    name = "Exp"
    keys = ("gamma",)

    def read(self, table: PolicyTable, common: Mapping[str, Any]) -> dict[str, Any]:
        if "gamma" not in table:
            table.problem((), "lr policy Exp needs gamma")
        return {"gamma": table.number("gamma", 1.0)}

    def regular_lr(self, schedule: Any, progress: int, max_progress: int, base_lr: float) -> float:
        return base_lr * schedule.options["gamma"] ** progress


#: The core's policies by registered name: the same table as the ``selfsup.lr_policies``
#: entry points of its ``pyproject.toml``, used when discovery is blocked (test registries).
BUILTINS: dict[str, type[LrPolicy]] = {
    "CosineAnnealing": CosineAnnealing,
    "cosine": CosineAnnealing,
    "StepFixCosineAnnealing": StepFixCosineAnnealing,
    "Step": Step,
    "Fixed": Fixed,
    "constant": Fixed,
    "Poly": Poly,
    "Exp": Exp,
}


def _registry_of(registries: Any = None) -> Any:
    """The ``lr_policies`` registry of ``registries`` (None: the registries in use)."""
    from .. import session as _session

    return (registries if registries is not None else _session.registries())["lr_policies"]


def _instance(name: str, obj: Any) -> LrPolicy:
    """A policy object for what a registration holds (a class, or an instance)."""
    policy = obj() if isinstance(obj, type) else obj
    if not getattr(policy, "name", ""):
        policy.name = name
    return policy


def find_policy(raw: Any, registries: Any = None) -> LrPolicy:
    """The policy ``[lr_config] policy = raw`` names: an installed policy (entry-point group
    ``selfsup.lr_policies``, or registered in-process), matched exactly, else ignoring case;
    ``"dist:Name"`` picks a distribution's. Raises :class:`SelfSupError` with the message
    (no file or key) when there is none, with a did-you-mean over the installed names.
    ``registries``: where to look (None: the process-wide session's)."""
    registered = _registry_of(registries)
    names = registered.names()
    if isinstance(raw, str):
        exact = raw if raw in names or ":" in raw else {n.lower(): n for n in names}.get(raw.lower())
        if exact is not None:
            return _instance(exact.rpartition(":")[2], registered.get(exact))
        builtin = {n.lower(): n for n in BUILTINS}.get(raw.lower())
        if builtin is not None:
            return _instance(builtin, BUILTINS[builtin])
    known = [*names, *(n for n in BUILTINS if n not in names)]
    hint = did_you_mean(str(raw), known) or f"; policies are {', '.join(known)}"
    raise SelfSupError(f"unknown lr policy {raw!r}{hint}")


def installed_policies() -> dict[str, LrPolicy]:
    """Every installed policy by registered name (the built-ins too); ones that fail to
    load are left out (``selfsup-run list lr_policies`` shows their error)."""
    found: dict[str, LrPolicy] = {}
    for name in [*_registry_of().names(), *BUILTINS]:
        if name not in found:
            try:
                found[name] = find_policy(name)
            except SelfSupError:
                continue
    return found


def __getattr__(name: str) -> Any:
    """``POLICIES`` (lower-case name -> canonical name) and ``POLICY_KEYS`` (canonical name ->
    its keys besides :data:`COMMON_KEYS`), computed from the installed policies."""
    if name == "POLICIES":
        return {n.lower(): p.name for n, p in installed_policies().items()}
    if name == "POLICY_KEYS":
        return {p.name: tuple(p.keys) for p in installed_policies().values()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
