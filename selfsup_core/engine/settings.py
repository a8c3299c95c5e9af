"""The trainer's own config tables, validated before anything is built.

The names follow MMSelfSup 0.x / MMCV so old configs move over one to one::

    seed = 0                      # top level: seed, deterministic, work_dir
    [runner]        max_epochs, device, precision, channels_last, compile, cudnn_benchmark,
                    find_unused_parameters, distributed (the runtime of a multi-process run:
                    "ddp", or one a plugin registers in selfsup.runtimes: selfsup-fsdp's "fsdp2"),
                    dist_timeout (engine.launch), activation_checkpointing (read by runtimes that
                    support it: fsdp2)
    [data]          samples_per_gpu, global_batch_size, workers_per_gpu (or "auto"), drop_last, pin_memory,
                    persistent_workers, prefetch_factor, replace, resident,
                    resident_memory_share, train (the dataset table)
    [optimizer]     checked by engine.optim
    [optimizer_config]  grad_clip = {max_norm, norm_type}, accumulate_steps (update_interval)
    [lr_config]     checked by engine.schedules
    [checkpoint_config] interval, max_keep_ckpts
    [log_config]    interval, tensorboard, progress, plot
    [[hooks]]       trainer hooks (the selfsup.hooks registry)

Every unknown key, wrong type or impossible value is reported with its file and dotted key
in one :class:`~selfsup_core.errors.ConfigError`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..config import Config, KeyPath
from ..errors import ConfigError, Problem, Problems, did_you_mean
from ..sections import CORE_SECTIONS, top_level_problems

#: The core's top-level keys; plugins declare theirs (``selfsup_config_sections``), so that a
#: typo in any section name is caught (:mod:`selfsup_core.sections`).
TOP_LEVEL_KEYS = frozenset(CORE_SECTIONS)
PRECISIONS = ("auto", "fastest", "bf16", "fp16", "fp32")
PROGRESS_STYLES = ("auto", "bar", "lines", "none")


@attrs.define
class RunSettings:
    """Everything the loop needs that is not a component."""

    max_epochs: int
    seed: int = 0
    deterministic: bool = False
    work_dir: str | None = None
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | str = "auto"
    compile: bool | str = False
    cudnn_benchmark: bool = True
    find_unused_parameters: bool = False
    distributed: str = "ddp"
    dist_timeout: float = 1800.0
    activation_checkpointing: bool = False
    global_batch_size: int | None = None
    samples_per_gpu: int = 32
    workers_per_gpu: int | str = 2
    drop_last: bool = True
    pin_memory: bool | str = "auto"
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    replace: bool = False
    resident: bool | str = False
    resident_memory_share: float = 0.25
    grad_clip: dict[str, Any] | None = None
    accumulate_steps: int = 1
    checkpoint_interval: int = 1
    max_keep_ckpts: int = -1
    log_interval: int = 50
    tensorboard: bool = False
    progress: str = "auto"
    plot: bool | str = "auto"


# (section, key) -> (attribute, accepted python types, check(value) -> error text or None)
def positive(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _seed(value: Any) -> str | None:
    """A seed is 0 <= seed < 2**32 (NumPy's range; the sampler derives per-epoch seeds from it)."""
    return None if 0 <= value < 2**32 else f"must be between 0 and {2**32 - 1} (2**32 - 1), got {value!r}"


def _bool_or_auto(value: Any) -> str | None:
    return None if isinstance(value, bool) or value == "auto" else f"must be true, false or 'auto', got {value!r}"


def _one_of(choices: tuple[str, ...]):
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value not in choices:
            return f"must be one of {', '.join(repr(c) for c in choices)}{did_you_mean(value, choices)}"
        return None

    return check


def _device(value: Any) -> str | None:
    head = value.split(":")[0]
    return None if head in ("auto", "cpu", "cuda", "mps") else "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def check_device(value: str, flag: str) -> None:
    """Raise a one-line :class:`ConfigError` naming ``flag`` when ``value`` is not a device
    the trainer knows (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``); called by the CLI
    for ``--device``."""
    problem = _device(value)
    index = value.partition(":")[2]
    if problem is None and index and not index.isdigit():
        problem = "must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    if problem:
        raise ConfigError(f"{problem}, got {value!r}", key=flag)


def _grad_clip(value: Any) -> str | None:
    if value is None:
        return None
    unknown = set(value) - {"max_norm", "norm_type"}
    if unknown:
        return f"unknown key {sorted(unknown)[0]!r}; grad_clip takes max_norm and norm_type"
    if "max_norm" not in value:
        return "needs max_norm, e.g. grad_clip = {max_norm = 1.0}"
    for key in ("max_norm", "norm_type"):
        number = value.get(key, 1.0)
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not number > 0:
            return f"{key} must be a number > 0, got {number!r}"
    return None


def _compile(value: Any) -> str | None:
    if isinstance(value, str) and value not in ("model", "backbone", "auto"):
        return "must be true, false, 'auto' (on for CUDA), 'model' or 'backbone'"
    return None


def _runtime(value: Any) -> str | None:
    """A registered distributed runtime (``selfsup.runtimes``: ``ddp`` or a plugin's)."""
    from .. import session as _session

    runtimes = _session.registries()["runtimes"]
    if isinstance(value, str) and value not in runtimes:
        names = runtimes.names()
        return (f"unknown distributed runtime {value!r}{did_you_mean(value, names)}; installed: "
                f"{', '.join(names) or 'none'} (selfsup-run list runtimes)")
    return None


def _workers(value: Any) -> str | None:
    if isinstance(value, str):
        return None if value == "auto" else f"must be an integer >= 0 or 'auto', got {value!r}"
    return non_negative(value)


def _seconds(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0 seconds, got {value!r}"


def _share(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"must be a share of the device memory in (0, 1], got {value!r}"


INT = (int,)
BOOL = (bool,)
#: How a key is read: (attribute, accepted python types, check(value) -> error text or None).
KeySpec = tuple[str, tuple[type, ...], Any]
_SCHEMA: dict[tuple[str, str], KeySpec] = {
    ("", "seed"): ("seed", INT, _seed),
    ("", "deterministic"): ("deterministic", BOOL, None),
    ("", "work_dir"): ("work_dir", (str,), None),
    ("runner", "type"): ("", (str,), _one_of(("EpochBasedRunner",))),
    ("runner", "max_epochs"): ("max_epochs", INT, positive),
    ("runner", "device"): ("device", (str,), _device),
    ("runner", "precision"): ("precision", (str,), _one_of(PRECISIONS)),
    ("runner", "channels_last"): ("channels_last", (bool, str), _bool_or_auto),
    ("runner", "compile"): ("compile", (bool, str), _compile),
    ("runner", "cudnn_benchmark"): ("cudnn_benchmark", BOOL, None),
    ("runner", "find_unused_parameters"): ("find_unused_parameters", BOOL, None),
    ("runner", "distributed"): ("distributed", (str,), _runtime),
    ("runner", "dist_timeout"): ("dist_timeout", (float, int), _seconds),
    ("runner", "activation_checkpointing"): ("activation_checkpointing", BOOL, None),
    ("data", "samples_per_gpu"): ("samples_per_gpu", INT, positive),
    ("data", "global_batch_size"): ("global_batch_size", INT, positive),
    ("data", "workers_per_gpu"): ("workers_per_gpu", (int, str), _workers),
    ("data", "drop_last"): ("drop_last", BOOL, None),
    ("data", "pin_memory"): ("pin_memory", (bool, str), _one_of(("auto",))),
    ("data", "persistent_workers"): ("persistent_workers", BOOL, None),
    ("data", "prefetch_factor"): ("prefetch_factor", INT, positive),
    ("data", "replace"): ("replace", BOOL, None),
    ("data", "resident"): ("resident", (bool, str), _bool_or_auto),
    ("data", "resident_memory_share"): ("resident_memory_share", (float, int), _share),
    ("optimizer_config", "grad_clip"): ("grad_clip", (dict, type(None)), _grad_clip),
    ("optimizer_config", "accumulate_steps"): ("accumulate_steps", INT, positive),
    ("optimizer_config", "update_interval"): ("accumulate_steps", INT, positive),
    ("checkpoint_config", "interval"): ("checkpoint_interval", INT, positive),
    ("checkpoint_config", "max_keep_ckpts"): ("max_keep_ckpts", INT, None),
    ("log_config", "interval"): ("log_interval", INT, positive),
    ("log_config", "tensorboard"): ("tensorboard", BOOL, None),
    ("log_config", "progress"): ("progress", (str,), _one_of(PROGRESS_STYLES)),
    ("log_config", "plot"): ("plot", (bool, str), _bool_or_auto),
}
#: Keys of trainer sections that hold components or belong to another module.
_PASSTHROUGH = {("data", "train"), ("data", "val"), ("data", "test")}
_SECTIONS = ("runner", "data", "optimizer_config", "checkpoint_config", "log_config")


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", bool: "true or false", str: "a string", dict: "a table", type(None): "absent"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def check_table(
    config: Config,
    section: str,
    table: Mapping[str, Any],
    schema: Mapping[str, KeySpec],
    problems: Problems | list[Problem],
    passthrough: Iterable[str] = (),
) -> dict[str, Any]:
    """The attributes ``schema`` reads from ``table`` (the ``[section]`` of ``config``; ``""``:
    the top level). Unknown keys (with a did-you-mean), wrong types and failed checks are
    appended to ``problems``; keys in ``passthrough`` belong to someone else and are skipped."""
    values: dict[str, Any] = {}
    passthrough = tuple(passthrough)
    known = [*schema, *passthrough]
    for key, value in table.items():
        path: KeyPath = (section, key) if section else (key,)
        spec = schema.get(key)
        if spec is None:
            if section and key not in passthrough:
                problems.append(config.problem(
                    path, f"unknown key of [{section}]{did_you_mean(key, known)}; it takes {', '.join(known)}"))
            continue
        attribute, types, check = spec
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            problems.append(config.problem(path, f"must be {_type_name(types)}, got {value!r}"))
            continue
        message = check(value) if check is not None else None
        if message:
            problems.append(config.problem(path, message))
            continue
        if attribute:
            values[attribute] = value
    return values


def read_settings(config: Config, plugin_manager: Any = None) -> RunSettings:
    """The :class:`RunSettings` of ``config``; raises one ConfigError listing every problem.
    Top-level keys are checked against the core's and those the plugins of ``plugin_manager``
    (default: the process-wide one) declare."""
    problems = Problems(config)
    data = config.data
    problems += top_level_problems(config, plugin_manager)
    values: dict[str, Any] = {}
    for section in ("", *_SECTIONS):
        table = data if section == "" else data.get(section, {})
        if section and not isinstance(table, Mapping):
            problems.add((section,), f"must be a table, got {type(table).__name__}")
            continue
        schema = {k: spec for (s, k), spec in _SCHEMA.items() if s == section}
        passthrough = [k for (s, k) in _PASSTHROUGH if s == section]
        values.update(check_table(config, section, table, schema, problems, passthrough))
    if "max_epochs" not in values and not any(p.key == "runner.max_epochs" for p in problems):
        problems.add(("runner",), "missing max_epochs: add [runner] max_epochs = N")
    data_table = data.get("data")
    if not isinstance(data_table, Mapping) or "train" not in data_table:
        problems.add(("data",), "missing the training dataset: add a [data.train] table with a type")
    problems.raise_if_any()
    return RunSettings(**values)


__all__ = ["BOOL", "INT", "PRECISIONS", "KeySpec", "RunSettings", "TOP_LEVEL_KEYS", "check_table", "non_negative",
           "positive", "read_settings"]
