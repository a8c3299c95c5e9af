"""Entry-point discovery: which installed distributions provide selfsup components and plugins.

One pass over the installed distributions reads their entry-point metadata (no plugin code
is imported); the plugin manager and the registries share it, so a process scans once
(again only when the search path, its directories' contents or the switches change). Environment switches:

``SELFSUP_DISABLE_PLUGIN_AUTOLOAD=1``
    discover nothing: no component entry points and no ``selfsup.plugins``; only what is
    registered in-process is available (hermetic tests, debugging a broken install).
``SELFSUP_DISABLE_PLUGINS=name[,name...]``
    skip the named distributions (all their entry points) and the named entry points of the
    ``selfsup.plugins`` group. Names compare after PEP 503 normalisation.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import attrs

from ._compat import importlib_metadata

ENV_DISABLE_AUTOLOAD = "SELFSUP_DISABLE_PLUGIN_AUTOLOAD"
ENV_DISABLE_PLUGINS = "SELFSUP_DISABLE_PLUGINS"
GROUP_PREFIX = "selfsup."
PLUGIN_GROUP = "selfsup.plugins"


@attrs.frozen
class EntryPointInfo:
    """One entry point with the distribution that declares it."""

    group: str
    name: str
    value: str
    dist: str
    version: str
    entry_point: Any = attrs.field(eq=False, repr=False)

    @property
    def provider(self) -> str:
        """``"distribution version"``, as shown in listings and errors."""
        return f"{self.dist} {self.version}"

    def load(self) -> Any:
        """Import the module and return the object the entry point names."""
        return self.entry_point.load()


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: ``Selfsup_Models`` and ``selfsup.models`` are ``selfsup-models``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_flag(name: str, environ: Mapping[str, str]) -> bool:
    return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def autoload_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when ``SELFSUP_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value."""
    return _env_flag(ENV_DISABLE_AUTOLOAD, os.environ if environ is None else environ)


def disabled_names(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The normalised names listed in ``SELFSUP_DISABLE_PLUGINS``."""
    raw = (os.environ if environ is None else environ).get(ENV_DISABLE_PLUGINS, "")
    return frozenset(normalize_name(n.strip()) for n in raw.split(",") if n.strip())


#: scans done in this process, keyed by what can change their answer (see scan_entry_points)
_SCANS: dict[tuple[Any, ...], dict[str, list[EntryPointInfo]]] = {}
_SCAN_COUNT = 0


def scan_count() -> int:
    """How many times this process read the installed distributions' metadata (a run reads
    it once: the plugin manager and the registries share the scan)."""
    return _SCAN_COUNT


def clear_scan_cache() -> None:
    """Forget earlier scans: the next :func:`scan_entry_points` reads the metadata again."""
    _SCANS.clear()


def _scan_key(prefix: str, path: list[str] | None) -> tuple[Any, ...]:
    """What a scan's answer depends on: the prefix, the directories searched (and their
    modification times, which change when a distribution is installed or removed there) and
    the environment switches."""
    dirs = tuple(sys.path if path is None else path)
    stamps = []
    for entry in dirs:
        try:
            stamps.append(os.stat(entry or ".").st_mtime_ns)
        except OSError:
            stamps.append(None)
    return prefix, path is None, dirs, tuple(stamps), autoload_disabled(), disabled_names()


def scan_entry_points(
    prefix: str = GROUP_PREFIX, path: list[str] | None = None
) -> dict[str, list[EntryPointInfo]]:
    """Map each entry-point group starting with ``prefix`` to its entry points.

    ``path`` limits the scan to distributions found on those directories (default:
    ``sys.path``).

    Distributions are visited in ``sys.path`` order; a second copy of the metadata of a
    distribution already seen (stale egg-info beside a wheel, an editable install shadowing a
    regular one) is skipped, so one distribution never conflicts with itself. Honours the
    environment switches described in the module docstring.
    """
    key = _scan_key(prefix, path)
    cached = _SCANS.get(key)
    if cached is None:
        cached = _SCANS[key] = _scan(prefix, path)
    return {group: list(infos) for group, infos in cached.items()}


def _is_egg_info(dist: Any) -> bool:
    """Whether ``dist``'s metadata is a setuptools ``.egg-info`` folder."""
    return str(getattr(dist, "_path", "")).endswith(".egg-info")


def _scan(prefix: str, path: list[str] | None) -> dict[str, list[EntryPointInfo]]:
    """One pass over the installed distributions' metadata (see :func:`scan_entry_points`)."""
    global _SCAN_COUNT
    found: dict[str, list[EntryPointInfo]] = {}
    if autoload_disabled():
        return found
    _SCAN_COUNT += 1
    disabled = disabled_names()
    chosen: dict[str, Any] = {}
    search = {} if path is None else {"path": list(path)}
    for dist in importlib_metadata.distributions(**search):
        name = dist.metadata["Name"]
        if not name:
            continue
        key = normalize_name(name)
        # one copy per distribution: the first in path order, except that installed metadata
        # (.dist-info) wins over a source tree's .egg-info left by an older build (which the
        # working directory puts first on sys.path when a command runs from the checkout)
        if key not in chosen or (_is_egg_info(chosen[key]) and not _is_egg_info(dist)):
            chosen[key] = dist
    for key, dist in chosen.items():
        name = dist.metadata["Name"]
        if key in disabled:
            continue
        for ep in dist.entry_points:
            if not ep.group.startswith(prefix):
                continue
            if ep.group == PLUGIN_GROUP and normalize_name(ep.name) in disabled:
                continue
            info = EntryPointInfo(ep.group, ep.name, ep.value, name, dist.version, ep)
            found.setdefault(ep.group, []).append(info)
    return found
