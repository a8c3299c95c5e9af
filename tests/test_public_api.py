"""The public plugin API: plugins import only ``selfsup_core.api`` (and ``selfsup_core.testing``
for test helpers), pin the core's minor version, and the API itself is cheap to import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {"selfsup_core.api", "selfsup_core.testing"}
PACKAGES = sorted(
    [p for p in (ROOT / "plugins").glob("*/selfsup_*") if p.is_dir() and not p.name.endswith(".egg-info")]
    + [ROOT / "examples" / "third_party_plugin" / "selfsup_example_plugin"]
)
PYPROJECTS = sorted((ROOT / "plugins").glob("*/pyproject.toml")) + [ROOT / "examples" / "third_party_plugin" / "pyproject.toml"]


def private_imports(path: Path) -> list[str]:
    """``FILE:LINE: module`` for every import of a private core module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] if node.module != "selfsup_core" else [f"selfsup_core.{a.name}" for a in node.names]
            if node.module == "selfsup_core.api":
                from selfsup_core import api

                found += [f"{path.relative_to(ROOT)}:{node.lineno}: selfsup_core.api has no {a.name}"
                          for a in node.names if a.name not in api.__all__]
        else:
            continue
        for module in modules:
            if (module == "selfsup_core" or module.startswith("selfsup_core.")) and module not in PUBLIC:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {module}")
    return found


def test_plugins_import_only_the_public_api():
    assert len(PACKAGES) >= 9
    assert {"selfsup_distill", "selfsup_mim", "selfsup_clustering"} <= {p.name for p in PACKAGES}
    violations = [v for package in PACKAGES for path in sorted(package.rglob("*.py")) for v in private_imports(path)]
    assert violations == [], "plugins must import from selfsup_core.api only:\n" + "\n".join(violations)


def test_the_check_catches_a_private_import(tmp_path):
    bad = ROOT / "tests" / "_probe_private_import.py"
    source = "from selfsup_core.engine import dist\nimport selfsup_core.build\nfrom selfsup_core import api, cli\n"
    try:
        bad.write_text(source, encoding="utf-8")
        assert [v.split(": ", 1)[1] for v in private_imports(bad)] == [
            "selfsup_core.engine", "selfsup_core.build", "selfsup_core.cli"]
    finally:
        bad.unlink()


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=lambda p: p.parent.name)
def test_every_plugin_pins_the_core_minor_version(pyproject):
    assert '"selfsup-core>=0.1,<0.2"' in pyproject.read_text(encoding="utf-8"), "depend on selfsup-core>=0.1,<0.2"


def test_every_api_name_resolves_and_a_typo_names_the_closest():
    from selfsup_core import api

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    with pytest.raises(AttributeError, match="did you mean 'ConfigError'"):
        api.ConfigEror  # noqa: B018


def test_importing_the_api_does_not_import_torch():
    code = "import sys, selfsup_core.api as a; a.ConfigError; a.hookimpl; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_one_process_scans_the_installed_entry_points_once(tmp_path):
    """The plugin manager and the registries share one scan, whatever the commands run."""
    config = ROOT / "examples" / "configs" / "simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"
    code = (
        "import contextlib, io, sys\n"
        "from selfsup_core import cli, discovery\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert cli.main(['list']) == 0\n"
        f"    assert cli.main(['show-config', {str(config)!r}]) == 0\n"
        f"    assert cli.main(['count-params', {str(config)!r}]) == 0\n"
        "print(discovery.scan_count())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"
