"""Copy the shipped configs into their plugins' packages, for ``"dist::name.toml"`` bases.

    python examples/configs/package_configs.py          # write the copies
    python examples/configs/package_configs.py --check  # exit 1 if a copy is stale

``examples/configs`` stays the place to edit. Each config goes to the plugin that provides its
algorithm (``plugins/<dist>/<package>/configs/``); a ``_base_/...`` entry becomes the scoped
name of the copy that ``selfsup-data`` ships (``"selfsup-data::evaluation/fashion-mnist.toml"``);
bases in the same plugin stay relative. ``tests/test_packaged_configs.py`` runs ``--check``.
"""
from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_BASES = "selfsup-data"  # examples/configs/_base_/* -> selfsup-data::*


@functools.lru_cache(maxsize=None)
def owner_of(name: str) -> str:
    """The distribution that ships config ``name`` (of this folder): the one providing its
    ``model.type`` algorithm, as installed."""
    from selfsup_core.config import load_config
    from selfsup_core.session import registries

    return registries()["algorithms"].lookup(load_config(HERE / name).data["model"]["type"]).dist


def folder_of(dist: str) -> Path:
    """``plugins/<dist>/<package>/configs``."""
    return ROOT / "plugins" / dist / dist.replace("-", "_") / "configs"


def copies() -> dict[Path, str]:
    """Every packaged copy's path and text."""
    out: dict[Path, str] = {}
    for source in sorted(HERE.glob("*.toml")):
        dist = owner_of(source.name)
        out[folder_of(dist) / source.name] = _rewrite(source, dist)
    for source in sorted((HERE / "_base_").rglob("*.toml")):
        relative = source.relative_to(HERE / "_base_").as_posix()
        out[folder_of(SHARED_BASES) / relative] = _header(f"_base_/{relative}") + source.read_text(encoding="utf-8")
    return out


def _header(name: str) -> str:
    return (f"# Packaged copy of examples/configs/{name} (python examples/configs/package_configs.py writes it;\n"
            "# edit that file instead). Inherit it from anywhere by its scoped name, see selfsup-run list configs.\n")


def _rewrite(source: Path, dist: str) -> str:
    text = source.read_text(encoding="utf-8")

    def scoped(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("_base_/"):
            return f'"{SHARED_BASES}::{name[len("_base_/"):]}"'
        owner = owner_of(name)
        return f'"{name}"' if owner == dist else f'"{owner}::{name}"'

    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("_base_"):
            lines[i] = re.sub(r'"([^"]+\.toml)"', scoped, line)
    return _header(source.name) + "".join(lines)


def main(argv: list[str]) -> int:
    stale = []
    for path, text in copies().items():
        if "--check" in argv:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        init = path.parent / "__init__.py"
        if path.parent.name == "configs" and not init.exists():
            init.write_text('"""Configs shipped with this plugin (selfsup-run list configs)."""\n', encoding="utf-8")
        path.write_text(text, encoding="utf-8")
    if stale:
        print("stale packaged configs (run python examples/configs/package_configs.py):", file=sys.stderr)
        for path in stale:
            print(f"  {path.relative_to(ROOT)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
