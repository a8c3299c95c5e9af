"""``selfsup-run show NAME`` (and ``selfsup-run list --args NAME``): a component's arguments.

Prints, for every installed component called ``NAME`` (or ``dist:NAME``; ``--kind`` narrows
it to one kind): its kind, provider and import target, the first paragraph of its docstring,
then one line per constructor argument with its type, its default (or ``required``) and the
argument's line from the docstring's ``Args:`` section when there is one. Imports only the
component's own module (and what it imports, usually torch).
"""
from __future__ import annotations

import argparse
import inspect
import json
import re
import textwrap
from typing import Any

from . import registry as _registry
from . import session as _session
from .errors import SelfSupError, did_you_mean


def summary(doc: str | None) -> list[str]:
    """The docstring's first paragraph (up to the first blank line), dedented."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out = []
    for line in lines:
        if not line.strip():
            break
        out.append(line.rstrip())
    return out


def argument_docs(doc: str | None) -> dict[str, str]:
    """``name -> description`` from a Google-style ``Args:`` section (entries ``name: text``
    or ``name, other: text``, continued on more-indented lines)."""
    found: dict[str, str] = {}
    in_args = False
    indent = None
    current_names: list[str] = []
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            in_args, indent, current_names = True, None, []
            continue
        if not in_args:
            continue
        if not stripped or not line.startswith(" "):
            if not line.startswith(" ") and stripped:
                break
            current_names = []
            continue
        depth = len(line) - len(line.lstrip())
        match = re.match(r"^([A-Za-z_][\w, ]*):\s*(.*)$", stripped)
        if match and (indent is None or depth == indent):
            indent = depth
            current_names = [n.strip() for n in match.group(1).split(",") if n.strip() not in found]
            for name in current_names:
                found[name] = match.group(2).strip()
        elif indent is not None and depth > indent:
            for name in current_names:
                found[name] = f"{found[name]} {stripped}".strip()
    return found


def describe(name: str, kind: str | None = None) -> list[dict[str, Any]]:
    """One record per component called ``name`` (of ``kind``, else of every kind):
    ``{"kind", "name", "provider", "target", "summary", "arguments": [{"name", "type",
    "default", "required", "doc"}]}``. Raises SelfSupError (with a did-you-mean) when
    no kind has it."""
    from .build import accepted_parameters, annotations, type_text

    registries = _session.registries()
    kinds = [_registry.canonical_kind(kind)] if kind else list(_registry.KINDS)
    dist, _, bare = name.rpartition(":")
    records = []
    for k in kinds:
        for component in registries[k].components():
            if component.name != bare or (dist and component.dist != dist):
                continue
            obj = component.load()
            params, _ = accepted_parameters(obj)
            hints = annotations(obj)
            docs = {**argument_docs(getattr(getattr(obj, "__init__", None), "__doc__", None)),
                    **argument_docs(obj.__doc__)}
            arguments = []
            for pname, param in params.items():
                annotation = hints.get(pname, param.annotation)
                arguments.append({
                    "name": pname,
                    "type": "" if annotation is inspect.Parameter.empty
                    else type_text(annotation).replace("collections.abc.", ""),
                    "required": param.default is inspect.Parameter.empty,
                    "default": None if param.default is inspect.Parameter.empty else repr(param.default),
                    "doc": docs.get(pname, ""),
                })
            if k == "lr_policies":  # a policy's arguments are the [lr_config] keys it reads
                arguments = [{"name": key, "type": "", "required": False, "default": None,
                              "doc": f"[lr_config] {key}"} for key in getattr(obj, "keys", ())]
            records.append({"kind": k, "name": component.name, "provider": component.provider,
                            "target": component.target, "summary": summary(obj.__doc__), "arguments": arguments})
    if not records:
        known = sorted({n for k in kinds for n in registries[k].list()})
        where = f" {kinds[0]}" if kind else ""
        raise SelfSupError(f"no{where} component named {name!r}{did_you_mean(bare, known)}; "
                                    "see selfsup-run list")
    return records


def format_record(record: dict[str, Any]) -> str:
    """The text ``selfsup-run show`` prints for one component."""
    lines = [f"{record['name']} ({record['kind']}, {record['provider']})  [{record['target']}]"]
    lines += [f"  {line}" for line in record["summary"]]
    lines.append("arguments:" if record["arguments"] else "arguments: none")
    for arg in record["arguments"]:
        kind = f": {arg['type']}" if arg["type"] else ""
        value = "  (required)" if arg["required"] else "" if arg["default"] is None else f" = {arg['default']}"
        line = f"  {arg['name']}{kind}{value}"
        if arg["doc"]:
            wrapped = textwrap.wrap(arg["doc"], 88)
            shown = wrapped[:3] if len(wrapped) <= 3 else [*wrapped[:2], wrapped[2] + " ..."]
            line = f"{line}\n      " + "\n      ".join(shown)
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """The ``show`` command (``args.name``, ``args.kind``, ``args.json``)."""
    records = describe(args.name, getattr(args, "kind", None))
    if getattr(args, "json", False):
        print(json.dumps(records, indent=2))
    else:
        print("\n\n".join(format_record(r) for r in records))
    return 0


__all__ = ["argument_docs", "describe", "format_record", "run", "summary"]
