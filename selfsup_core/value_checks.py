"""Checks of component arguments that a signature cannot express, run by the builder
before anything is constructed (each returns the problem text, or None):

* a key that names a component kind (``backbone``, ``neck``, ``head``, ``data_source``,
  ``pipeline`` ...) must hold a component table (or a list of them, or nothing), never a
  string, a number or an empty table: ``model.backbone = "null"`` is refused here instead of
  failing later with ``'str' object is not callable``;
* sizes must be positive: an integer argument named ``*channels``, ``num_classes``,
  ``embed_dims``, ``num_heads``, ``size`` ... (``base_channels = 0`` would build a model
  with empty tensors that fails at its first forward), a ``temperature`` > 0;
* ranges given as two numbers (``scale``, ``ratio``) must be increasing and positive.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: integer arguments that count something that must exist (>= 1)
_POSITIVE_NAMES = frozenset({
    "num_classes", "dim", "embed_dim", "embed_dims", "feat_dim", "hidden", "hidden_dim", "num_heads", "num_layers",
    "patch_size", "size", "crop_size", "img_size", "num_crops", "depth", "num_stages", "stem_channels", "k",
    "num_prototypes", "num_clusters", "queue_len", "dim_mlp", "mlp_dim",
})
_POSITIVE_SUFFIXES = ("channels",)
_POSITIVE_FLOATS = frozenset({"temperature"})
_INCREASING_PAIRS = frozenset({"scale", "ratio"})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def component_value_problem(key: str | int, value: Any, kind: str) -> str | None:
    """Why ``value`` cannot stand under ``key`` (a key whose name says it holds a ``kind``
    component), or None. Called by :class:`selfsup_core.build.Builder` for every argument of a
    component and by :func:`selfsup_core.build.validate` for keys of the config's own tables."""
    what = f"a table with a 'type' naming a {kind.rstrip('s')} component"
    if value is None:
        return None
    if isinstance(value, Mapping):
        if "type" in value:
            return None
        if value and all(isinstance(v, Mapping) and "type" in v for v in value.values()):
            return None  # a table of named components ({extra = {type = ...}})
        return f"must be {what}, got {'an empty table' if not value else 'a table without type'}"
    if isinstance(value, list):  # a pipeline, or a list of pipelines (one per view)
        for index, item in enumerate(value):
            if isinstance(item, list):
                problem = component_value_problem(key, item, kind)
                if problem:
                    return f"item {index}: {problem}"
            elif not (isinstance(item, Mapping) and "type" in item):
                return component_item_problem(index, item, kind)
        return None
    return f"must be {what}, got {_describe(value)}"


def component_item_problem(index: int, item: Any, kind: str) -> str:
    """The problem of item ``index`` of a list of ``kind`` components that is not a table with
    a ``type`` (the same text :func:`component_value_problem` gives for the first such item);
    used by :func:`selfsup_core.build.build_hooks` so that a bad hook is reported once."""
    return f"item {index} must be a table with a 'type' naming a {kind.rstrip('s')} component, got {_describe(item)}"


def range_problem(key: str, value: Any) -> str | None:
    """Why the argument ``key = value`` of a component is out of range, or None (see the
    module docstring for the rules; unknown names are not checked)."""
    lowered = key.lower()
    if isinstance(value, Mapping) and not lowered.endswith("_cfg") and "type" not in value:  # e.g. a ViT arch table
        for sub_key, sub in value.items():
            problem = range_problem(str(sub_key), sub)
            if problem:
                return f"{sub_key}: {problem}"
        return None
    if lowered in _POSITIVE_NAMES or lowered.endswith(_POSITIVE_SUFFIXES):
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, bool) for v in values):
            return f"must be a positive integer, got {value!r}"
        bad = [v for v in values if _is_number(v) and isinstance(v, int) and v < 1]
        if bad:
            return f"must be >= 1, got {value!r}"
    if lowered in _POSITIVE_FLOATS and _is_number(value) and value <= 0:
        return f"must be > 0, got {value!r}"
    if lowered in _INCREASING_PAIRS and isinstance(value, list) and len(value) == 2 and all(map(_is_number, value)):
        low, high = value
        if not 0 < low <= high:
            return f"must be [low, high] with 0 < low <= high, got {value!r}"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, Mapping):
        return "a table without type"
    return repr(value)


def scalar_fits_class(value: Any, annotation: Any) -> bool | None:
    """Whether a TOML number, boolean or table (without ``type``) can stand for an argument
    annotated with a class that is not a TOML type (``torch.dtype``, ``Path``, ``nn.Module``):
    False (no number is one, e.g. ``dtype = 123``; no plain table is one), or None when it cannot be told (other values, numeric classes, typing
    constructs). Called by :func:`selfsup_core.build.type_matches` as its last resort."""
    import numbers

    if isinstance(value, Mapping) and isinstance(annotation, type) and annotation is not object:
        return issubclass(annotation, Mapping)  # a table is no dtype, path or module
    if not isinstance(annotation, type) or not isinstance(value, (bool, int, float)):
        return None
    if issubclass(annotation, numbers.Number) or annotation in (object, complex):
        return None
    try:
        return isinstance(value, annotation) or False
    except TypeError:  # a typing.Protocol without @runtime_checkable, ...
        return None
