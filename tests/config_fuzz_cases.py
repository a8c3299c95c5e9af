"""Malformed configs derived from the shipped Fashion-MNIST configs, for ``test_config_fuzz``:
each case is ``(name, TOML text, extra CLI args)``, generated from a seed."""
from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selfsup_core.config import dump_toml, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*fashion-mnist.toml"))

#: replacement values of another type, by the type of the value they replace
_SWAPS: dict[type, list[Any]] = {
    bool: ["yes", 3, [True]],
    int: ["many", [4], {"a": 1}, True],
    float: ["fast", [0.5], {"x": 1.0}, True],
    str: [123, ["a"], {"k": "v"}, False],
    list: [4, "list", {"a": 1}],
    dict: [7, "table", [1, 2]],
}
#: (dotted key, value) that are out of range for any config that has the key
_OUT_OF_RANGE = [
    ("data.samples_per_gpu", 0), ("data.workers_per_gpu", -1), ("runner.max_epochs", 0),
    ("runner.max_epochs", -3), ("seed", -1), ("seed", 2**63), ("model.backbone.base_channels", 0),
    ("model.backbone.base_channels", -8), ("model.neck.out_channels", 0), ("model.neck.in_channels", 0),
    ("model.head.temperature", -0.1), ("optimizer.lr", -1.0), ("optimizer.weight_decay", -1e-4),
    ("optimizer.momentum", -0.5), ("checkpoint_config.interval", -1), ("log_config.interval", 0),
    ("evaluation.samples_per_gpu", 0), ("optimizer_config.grad_clip", {"max_norm": -1}),
    ("runner.device", "tpu"), ("runner.precision", "fp7"), ("lr_config.policy", "Wobbly"),
    ("evaluation.min_loaded_share", 1.5), ("model.backbone.depth", 19),
    ("model.type", "builtins:dict"), ("model.backbone", "none"), ("model.backbone.type", 5),
]
_BAD_TEXT = [
    lambda t: t + "\n[model\n", lambda t: t + "\nkey = \n", lambda t: t.replace("\n", "\r"),
    lambda t: t + '\n"unterminated = 1\n', lambda t: t[: len(t) // 2] + "\n= = =\n", lambda t: "\x00" + t,
    lambda t: t + "\n[model]\ntype = 'x'\n",  # the table again
]


def _leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, (*path, key))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for index, sub in enumerate(value):
            yield from _leaves(sub, (*path, index))
    if path:
        yield path, value


def _set(data: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _has(data: Any, path: tuple) -> bool:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def cases(seed: int = 34, count: int = 300) -> list[tuple[str, str, list[str]]]:
    """``count`` malformed configs (name, TOML text, extra CLI args), the same for the same seed."""
    rng = random.Random(seed)
    resolved = {path.stem: load_config(path).data for path in CONFIGS}
    names = sorted(resolved)
    found: list[tuple[str, str, list[str]]] = []
    while len(found) < count:
        name = rng.choice(names)
        data = copy.deepcopy(resolved[name])
        kind = rng.choice(["swap", "swap", "unknown", "delete", "range", "range", "text", "override"])
        if kind == "swap":
            path, value = rng.choice([(p, v) for p, v in _leaves(data) if type(v) in _SWAPS])
            new = rng.choice(_SWAPS[type(value)])
            if (isinstance(value, list) and not value) or (path[-1] == "out_indices" and isinstance(new, int)):
                continue  # out_indices = 4 means (4,), by design
            if path[-1] == "workers_per_gpu" and isinstance(new, int) and not isinstance(new, bool):
                continue  # "auto" swapped for 123 is a valid worker count, not a malformed config
            _set(data, path, new)
            found.append((f"{name}: swap {'.'.join(map(str, path))}={new!r}", dump_toml(data), []))
        elif kind == "unknown":
            path, value = rng.choice([(p, v) for p, v in _leaves(data) if isinstance(v, dict) and "type" in v])
            value[rng.choice(["depht", "lrr", "typo_key", "in_chanels"])] = 1
            found.append((f"{name}: unknown key under {'.'.join(map(str, path))}", dump_toml(data), []))
        elif kind == "delete":
            path = rng.choice([("model",), ("model", "type"), ("data", "train", "type"),
                               *[p for p, v in _leaves(data) if isinstance(v, dict) and "type" in v and len(p) > 1]])
            if not _has(data, path):
                continue
            parent = data
            for key in path[:-1]:
                parent = parent[key]
            if path[-1] != "type" and len(path) > 1:
                parent[path[-1]] = {k: v for k, v in parent[path[-1]].items() if k != "type"}
                path = (*path, "type")
            else:
                del parent[path[-1]]
            found.append((f"{name}: delete {'.'.join(map(str, path))}", dump_toml(data), []))
        elif kind == "range":
            key, value = rng.choice(_OUT_OF_RANGE)
            path = tuple(key.split("."))
            if not _has(data, path[:-1]) or (path[-1] not in ("grad_clip",) and not _has(data, path)
                                               and path[0] not in ("seed", "evaluation")):
                continue
            _set(data, path, value)
            found.append((f"{name}: {key}={value!r}", dump_toml(data), []))
        elif kind == "text":
            bad = rng.choice(_BAD_TEXT)
            found.append((f"{name}: bad TOML #{_BAD_TEXT.index(bad)}", bad(dump_toml(data)), []))
        else:
            option = rng.choice(["model.backbone=null", "model.neck={}", "model.backbone.depth=0x13",
                                 "runner.max_epochs=1e3", "model.backbone._delete_=\"yes\"",
                                 "model.backbone.base_channels=0", "data.samples_per_gpu=-2", "seed=-5"])
            found.append((f"{name}: --cfg-options {option}", dump_toml(data), ["--cfg-options", option]))
    return found
