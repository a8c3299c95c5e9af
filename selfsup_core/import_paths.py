"""Import-path ``type``s (``"package.module:Class"``): refused unless the command line opts in.

A config is data: its ``type`` names an installed component. A dotted import path would make
a config able to import any module (importing is running code) and call any function
(``os:system``, ``builtins:eval``). So an import path is refused *before anything is
imported* unless the user passed ``--allow-import-paths`` (library code: ``with
allowing():``); even then it must name a class (never a function) of the kind its key
expects (see :data:`EXPECTED`).

This module imports nothing heavy; torch is imported only to check an opted-in class.
"""
from __future__ import annotations

import collections.abc
import contextlib
import contextvars
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

from ._compat import importlib_metadata
from .discovery import normalize_name
from .errors import SelfSupError

FLAG = "--allow-import-paths"



class ImportPathRefused(SelfSupError, LookupError):
    """A config's ``type`` is an import path and import paths are not allowed, or it names
    something other than a class of the kind expected; nothing was called."""


_allowed: contextvars.ContextVar[bool] = contextvars.ContextVar("selfsup_allow_import_paths", default=False)

#: What an opted-in class of each kind must be, as people read it.
EXPECTED: dict[str, str] = {
    "algorithms": "a torch.nn.Module subclass",
    "backbones": "a torch.nn.Module subclass",
    "necks": "a torch.nn.Module subclass",
    "heads": "a torch.nn.Module subclass",
    "memories": "a torch.nn.Module subclass",
    "datasets": "a dataset class (a torch.utils.data.Dataset, or with __len__ and __getitem__)",
    "data_sources": "a data source class (with __len__ and get_img)",
    "transforms": "a transform class (its instances callable)",
    "hooks": "a hook class (with selfsup_* hook methods)",
    "evaluators": "an evaluator class (with an evaluate method)",
    "lr_policies": "an lr policy class (with a regular_lr method, e.g. a selfsup_core.api.LrPolicy)",
}


def allowed() -> bool:
    """Whether import paths may be resolved in this context (default: no)."""
    return _allowed.get()


@contextlib.contextmanager
def allowing(flag: bool = True) -> Iterator[None]:
    """Allow (``flag=True``) or forbid import-path types inside a ``with`` block; called by
    the CLI around a command given ``--allow-import-paths``."""
    token = _allowed.set(flag)
    try:
        yield
    finally:
        _allowed.reset(token)


def is_module_path(text: str) -> bool:
    """``"os.path"`` yes, ``"selfsup-models"`` no."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def is_installed_distribution(name: str) -> bool:
    """Whether a distribution called ``name`` is installed (metadata only, nothing imported)."""
    try:
        importlib_metadata.distribution(name)
    except importlib_metadata.PackageNotFoundError:
        return normalize_name(name) != name and _is_installed_normalized(name)
    return True


def _is_installed_normalized(name: str) -> bool:
    try:
        importlib_metadata.distribution(normalize_name(name))
    except importlib_metadata.PackageNotFoundError:
        return False
    return True


def looks_like_import_path(type_name: Any) -> bool:
    """True for ``"pkg.module:Name"`` whose prefix is a module path and not an installed
    distribution (``"selfsup-models:ResNet"`` and ``"selfsup_models:ResNet"`` are qualified
    component names, not import paths)."""
    if not isinstance(type_name, str):
        return False
    prefix, sep, rest = type_name.partition(":")
    return bool(sep and rest) and is_module_path(prefix) and not is_installed_distribution(prefix)


def refusal(type_name: str, kind: str | None) -> str:
    """The one-line message for an import path used without the opt-in."""
    what = kind or "component"
    listing = f"selfsup-run list {kind}" if kind else "selfsup-run list"
    return (f"{type_name!r} is an import path, and a config may only name installed {what} ({listing}); "
            f"to build a class from a module in a one-off experiment, pass {FLAG} on the command line")


def find_in_config(data: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every ``(key path of the type, type)`` in ``data`` that is an import path; reads the
    data only (tables under ``*_cfg`` keys are component data and skipped)."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(data, Mapping):
        type_name = data.get("type")
        if looks_like_import_path(type_name):
            found.append(((*path, "type"), type_name))
        for key, value in data.items():
            if isinstance(key, str) and key.endswith("_cfg"):
                continue
            found += find_in_config(value, (*path, key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            found += find_in_config(item, (*path, index))
    return found


def check_class(obj: Any, kind: str, type_name: str) -> None:
    """Raise :class:`ImportPathRefused` (one line) unless ``obj`` is a class of the kind ``kind`` expects.

    Called after an opted-in import path was imported, before anything is instantiated."""
    expected = EXPECTED.get(kind, "a component class")
    if not inspect.isclass(obj):
        raise ImportPathRefused(f"{type_name!r} is a {type(obj).__name__}, not a class; an import path may only "
                        f"name a class ({kind}: {expected}), never a function")
    if issubclass(obj, type) or not _fits(obj, kind):
        raise ImportPathRefused(f"{type_name!r} is the class {obj.__module__}.{obj.__qualname__}, which is not "
                        f"{expected}, as {kind} must be")


def _is_map_style(klass: type) -> bool:
    """A duck-typed dataset: ``__len__`` and ``__getitem__``, and not a container type
    (``builtins:dict``, ``collections:OrderedDict`` ...)."""
    containers = (collections.abc.Mapping, collections.abc.Sequence, collections.abc.Set)
    return (callable(getattr(klass, "__len__", None)) and callable(getattr(klass, "__getitem__", None))
            and not issubclass(klass, containers))


def _fits(klass: type, kind: str) -> bool:
    if kind in ("algorithms", "backbones", "necks", "heads", "memories"):
        from torch import nn

        return issubclass(klass, nn.Module)
    if kind == "datasets":
        from torch.utils.data import Dataset

        return issubclass(klass, Dataset) or _is_map_style(klass)
    if kind == "data_sources":
        return callable(getattr(klass, "__len__", None)) and callable(getattr(klass, "get_img", None))
    if kind == "transforms":
        return any("__call__" in vars(base) or "forward" in vars(base)
                   for base in klass.__mro__ if base is not object)
    if kind == "hooks":
        from . import hookspecs

        names = {n for n in dir(hookspecs) if n.startswith("selfsup_")}
        return any(callable(getattr(klass, name, None)) for name in names)
    if kind == "evaluators":
        return callable(getattr(klass, "evaluate", None))
    if kind == "lr_policies":
        return callable(getattr(klass, "regular_lr", None))
    return False


__all__ = ["EXPECTED", "FLAG", "ImportPathRefused", "allowed", "allowing", "check_class", "find_in_config",
           "looks_like_import_path", "refusal"]
