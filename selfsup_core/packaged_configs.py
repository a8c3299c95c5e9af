"""Configs shipped inside installed distributions, named ``"dist-name::path.toml"``.

A distribution ships configs by declaring a package that holds them::

    [project.entry-points."selfsup.configs"]
    configs = "selfsup_contrastive.configs"

and listing ``configs/*.toml`` as package data. A config anywhere, inside or outside the
repository, then inherits one by its scoped name::

    _base_ = "selfsup-contrastive::simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml"

(distribution names compare after PEP 503 normalisation; ``path`` is relative to the
declared package's folder and may not leave it). ``selfsup-run list configs`` lists them all.
Finding a folder imports nothing but the declared package's parents' ``__init__`` modules.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from .discovery import normalize_name, scan_entry_points

GROUP = "selfsup.configs"
SEPARATOR = "::"


def is_scoped(name: str) -> bool:
    """Whether a ``_base_`` entry names a packaged config (``"dist::path"``)."""
    return SEPARATOR in name


@functools.lru_cache(maxsize=1)
def config_folders() -> dict[str, list[tuple[str, Path]]]:
    """``{distribution: [(package, folder), ...]}`` for every installed ``selfsup.configs`` entry
    point whose package can be found (scanned once per process; ``config_folders.cache_clear()``
    rescans)."""
    folders: dict[str, list[tuple[str, Path]]] = {}
    for ep in scan_entry_points(GROUP).get(GROUP, []):
        package = ep.value.partition(":")[0]
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if locations:
            folders.setdefault(ep.dist, []).append((package, Path(locations[0])))
    return folders


def resolve(name: str) -> Path:
    """The file a scoped name ``"dist::path.toml"`` stands for.

    Raises ValueError with one sentence (no such distribution among those shipping configs,
    with a did-you-mean; no such file, with the distribution's config names)."""
    from .errors import did_you_mean

    dist, _, relative = name.partition(SEPARATOR)
    folders = config_folders()
    by_key = {normalize_name(d): d for d in folders}
    found = by_key.get(normalize_name(dist.strip()))
    if found is None:
        known = sorted(folders)
        raise ValueError(f"no installed distribution {dist!r} ships configs{did_you_mean(dist, known)} "
                         f"(those that do: {', '.join(known) or 'none'}; selfsup-run list configs)")
    for _, folder in folders[found]:
        path = (folder / relative).resolve()
        if folder.resolve() in path.parents and path.is_file():
            return path
    names = [n for _, folder in folders[found] for n in list_folder(folder)]
    raise ValueError(f"{found} ships no config {relative!r}{did_you_mean(relative, names)} "
                     f"(selfsup-run list configs)")


def list_folder(folder: Path) -> list[str]:
    """The ``.toml`` files under ``folder``, as paths relative to it (bases included)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.toml"))


def listing() -> dict[str, list[str]]:
    """``{distribution: ["dist::path.toml", ...]}`` of every packaged config."""
    return {dist: [f"{dist}{SEPARATOR}{name}" for _, folder in entries for name in list_folder(folder)]
            for dist, entries in sorted(config_folders().items())}


def print_listing() -> int:
    """What ``selfsup-run list configs`` prints."""
    found = listing()
    total = sum(len(v) for v in found.values())
    print(f"configs (selfsup.configs): {total}")
    if not found:
        print("  (none installed)")
    for names in found.values():
        for name in names:
            print(f"  {name}")
    return 0


__all__ = ["GROUP", "SEPARATOR", "config_folders", "is_scoped", "list_folder", "listing", "print_listing", "resolve"]
