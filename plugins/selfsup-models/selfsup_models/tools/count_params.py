"""``selfsup-run count-params CONFIG [--cfg-options K=V ...] [--depth N] [--json]``.

Builds the config's ``[model]`` (on the CPU, as ``selfsup-run CONFIG --check`` does) and
counts its parameters per component: one row per dotted name prefix of ``N`` parts (depth 1:
``backbone``, ``neck``, ``head`` and what the algorithm adds, e.g. ``encoder_k``,
``target_backbone``, ``memory_bank``, a ``queue`` buffer), with

* parameters: every parameter's ``numel()``; a parameter shared by two modules is counted
  once, under the first name PyTorch gives it, so the rows add up to the total;
* trainable: those with ``requires_grad`` (what the optimizer updates); momentum / EMA
  copies (MoCo's ``encoder_k``, BYOL's ``target_*``) and frozen stages show 0 here;
* buffers: elements of registered buffers (BN running statistics, memory banks, queues),
  which are state, not parameters.

torch is imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import attrs

from selfsup_core.api import SelfSupError


@attrs.define
class Row:
    """The counts of one module path (or the total)."""

    name: str
    parameters: int = 0
    trainable: int = 0
    buffers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "parameters": self.parameters, "trainable": self.trainable,
                "buffers": self.buffers}


# -- counting -------------------------------------------------------------------------------
def _prefix(name: str, depth: int) -> str:
    """The first ``depth`` parts of a dotted name."""
    return ".".join(name.split(".")[:depth])


def count(model: Any, depth: int) -> tuple[list[Row], Row]:
    """Rows in module order (components without parameters or buffers included) and the total."""
    named_parameters = getattr(model, "named_parameters", None)
    if not callable(named_parameters):
        raise SelfSupError(f"model {type(model).__name__} has no named_parameters(); count-params counts "
                           "torch.nn.Module models")
    rows: dict[str, Row] = {}

    def row(name: str) -> Row:
        key = _prefix(name, depth)
        return rows.setdefault(key, Row(key))

    for name in _row_names(model, depth):
        row(name)
    total = Row("total")
    for name, parameter in named_parameters():
        size = int(parameter.numel())
        trainable = size if parameter.requires_grad else 0
        target = row(name)
        target.parameters += size
        target.trainable += trainable
        total.parameters += size
        total.trainable += trainable
    for name, buffer in _named(model, "named_buffers"):
        size = int(buffer.numel())
        row(name).buffers += size
        total.buffers += size
    return list(rows.values()), total


def _row_names(model: Any, depth: int) -> list[str]:
    """The table's rows in module order: modules ``depth`` deep, shallower modules without
    submodules (a parameter-free head), and the tensors that a shallower module holds itself
    (a ViT's ``backbone.cls_token`` at depth 2). The model's own tensors (MoCo's ``queue``)
    come last, from the counting passes."""
    names: list[str] = []
    for name, module in _named(model, "named_modules"):
        if not name:
            continue
        level = name.count(".") + 1
        if level > depth:
            continue
        if level == depth or not any(True for _ in module.children()):
            names.append(name)
            continue
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        names.extend(f"{name}.{tensor}" for tensor, _ in own)
    return names


def _named(model: Any, method: str) -> list[tuple[str, Any]]:
    """``model.<method>()`` as a list, or empty when the model lacks it."""
    function = getattr(model, method, None)
    return list(function()) if callable(function) else []


# -- formatting -----------------------------------------------------------------------------
def human(number: int) -> str:
    """``11,167,680 (11.17 M)``; numbers under a million without the short form."""
    for size, unit in ((10**9, "G"), (10**6, "M")):
        if number >= size:
            return f"{number:,} ({number / size:.2f} {unit})"
    return f"{number:,}"


def frozen_rows(rows: list[Row]) -> list[str]:
    """Names of rows that hold parameters of which none is trainable; a component whose
    every row is such (``target_backbone`` at depth 2) is named once."""
    groups: dict[str, list[Row]] = {}
    for r in rows:
        if r.parameters:
            groups.setdefault(r.name.split(".")[0], []).append(r)
    names: list[str] = []
    for top, members in groups.items():
        frozen = [r.name for r in members if not r.trainable]
        names += [top] if frozen and len(frozen) == len(members) else frozen
    return names


def format_table(rows: list[Row], total: Row, header: str) -> str:
    """The plain-text table, with a note on rows that the optimizer does not update."""
    cells = [("module", "parameters", "trainable", "buffers")]
    cells += [(r.name, human(r.parameters), human(r.trainable), human(r.buffers)) for r in (*rows, total)]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]

    def line(cell: tuple[str, ...]) -> str:
        return "  ".join([cell[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cell[1:], widths[1:]))])

    text = [header, line(cells[0]), *(line(c) for c in cells[1:-1]), "-" * len(line(cells[0])), line(cells[-1])]
    frozen = frozen_rows(rows)
    if frozen:
        text.append("not trained by the optimizer (requires_grad False: momentum/EMA copies, frozen or fixed "
                    f"weights): {', '.join(frozen)}")
    return "\n".join(text)


# -- command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Build CONFIG's model and print its parameter counts (table or JSON)."""
    if args.depth < 1:
        raise SelfSupError(f"count-params: --depth must be 1 or more (1: the model's components), got {args.depth}")
    from selfsup_core.api import build_model, load_command_config

    config = load_command_config(args)
    model = build_model(config)
    rows, total = count(model, args.depth)
    model_type = config.data["model"].get("type", type(model).__name__)
    if args.json:
        print(json.dumps({"config": str(config.filename), "model": model_type, "depth": args.depth,
                          "modules": [r.as_dict() for r in rows], "total": total.as_dict(),
                          "not_trainable": frozen_rows(rows)}, indent=2))
    else:
        print(format_table(rows, total, f"{config.filename}: model {model_type}"))
    return 0
