"""The files and folders a config's data sources name, for ``--check`` (which opens none).

``selfsup-run CONFIG --check`` validates the config and builds the model and hooks, but no
data source: a hook that needs data (DeepCluster's extraction set) builds it when the run
starts. After a successful check, :func:`data_paths_note` says which paths the run will read
and which of them are not there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

#: Arguments of data sources that name files or folders on disk.
PATH_KEYS = ("root", "ann_file", "data_prefix", "list_file", "file")


def data_paths(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    """``(dotted key, path)`` of every file or folder named by a data source table in ``data``
    (the training set, a hook's extraction set ...), in config order."""
    from .build import kind_for_key

    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        if path and kind_for_key(path[-1]) == "data_sources":
            found += [(".".join(map(str, (*path, k))), data[k]) for k in PATH_KEYS if isinstance(data.get(k), str)]
        for key, value in data.items():
            found += data_paths(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += data_paths(value, (*path, i))
    return found


def data_paths_note(data: Any, base: Path | None = None) -> str | None:
    """``note: --check opened no data; the run will read: PATH (KEY[, not found here]); ...``,
    or None when the config names no path. Relative paths are looked up from ``base`` (the
    current directory by default)."""
    paths = data_paths(data)
    if not paths:
        return None
    base = base if base is not None else Path.cwd()
    shown = [f"{value} ({key}{', not found here' if not (base / value).exists() else ''})" for key, value in paths]
    return "note: --check opened no data; the run will read: " + "; ".join(shown)


__all__ = ["PATH_KEYS", "data_paths", "data_paths_note"]
