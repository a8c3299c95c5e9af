"""selfsup-run as a user runs it: real subprocesses, real files, real distributions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup_core._compat import tomllib
from selfsup_core.testing import write_distribution

SCRIPT = Path(sys.executable).with_name("selfsup-run")

TOY_MODULE = '''
class TinyBackbone:
    def __init__(self, depth: int = 2, width: int = 8):
        import torch
        self.layers = [torch.nn.Linear(width, width) for _ in range(depth)]

class TinyAlgo:
    def __init__(self, backbone, temperature: float = 0.1):
        import torch
        self.net = torch.nn.Sequential(*backbone.layers)

    def parameters(self):
        return self.net.parameters()

    def named_parameters(self):
        return self.net.named_parameters()

class TinyHook:
    def __init__(self, every: int = 1):
        if every < 1:
            raise ValueError(f"TinyHook: every must be >= 1, got {every}")
'''


@pytest.fixture
def site(tmp_path):
    """A directory with a generated plugin distribution, put on PYTHONPATH of the subprocesses."""
    root = tmp_path / "site"
    write_distribution(
        root,
        "toy-plugin",
        "0.3.0",
        entry_points={
            "selfsup.algorithms": {"TinyAlgo": "toy_cli_plugin:TinyAlgo"},
            "selfsup.backbones": {"TinyBackbone": "toy_cli_plugin:TinyBackbone"},
            "selfsup.hooks": {"TinyHook": "toy_cli_plugin:TinyHook"},
            "selfsup.heads": {"BrokenHead": "toy_cli_broken:Head"},
        },
        modules={"toy_cli_plugin.py": TOY_MODULE, "toy_cli_broken.py": "raise RuntimeError('broken on purpose')\n"},
    )
    write_distribution(
        root,
        "toy-broken-plugin",
        "0.0.1",
        entry_points={"selfsup.plugins": {"toybroken": "toy_missing_module"}},
    )
    return root


def run(args, cwd, site=None, env=None):
    environ = dict(os.environ)
    if site is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), environ.get("PYTHONPATH")]))
    environ.update(env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=120)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


CONFIG = """
[model]
type = "TinyAlgo"
temperature = 0.2
[model.backbone]
type = "TinyBackbone"
depth = 3
"""


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "backbones", "--json"], ["list", "heads"]])
def test_help_and_list_do_not_import_torch(args, tmp_path, site):
    code = (
        "import sys\nfrom selfsup_core.cli import main\n"
        f"try:\n    rc = main({args!r})\nexcept SystemExit as exc:\n    rc = exc.code\n"
        "print('TORCH-IMPORTED' if 'torch' in sys.modules else 'TORCH-ABSENT', rc)\n"
    )
    environ = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ, capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "TORCH-ABSENT 0", result.stdout + result.stderr


def test_help_runs_as_a_script(tmp_path):
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    assert "selfsup-run CONFIG" in result.stdout and "show-config" in result.stdout


def test_list_shows_every_kind_components_and_broken_plugins(tmp_path, site):
    result = run(["list"], tmp_path, site)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for group in ("algorithms", "backbones", "necks", "heads", "memories", "datasets", "data_sources",
                  "transforms", "hooks", "evaluators"):
        assert f"{group} (selfsup.{group}):" in out
    assert any(line.split()[:3] == ["TinyBackbone", "toy-plugin", "0.3.0"] for line in out.splitlines())
    assert "toybroken (toy-broken-plugin 0.0.1): import failed: ModuleNotFoundError" in out
    verbose = run(["list", "heads", "--verbose"], tmp_path, site).stdout
    assert "BrokenHead" in verbose and "BROKEN: RuntimeError: broken on purpose" in verbose
    assert "TinyBackbone" not in run(["list", "backbones", "Nothing*"], tmp_path, site).stdout
    assert "TinyBackbone" in run(["list", "backbones", "Tiny*"], tmp_path, site).stdout
    data = json.loads(run(["list", "algorithm", "--json"], tmp_path, site).stdout)
    assert list(data["kinds"]) == ["algorithms"]
    rows = {row["name"]: row for row in data["kinds"]["algorithms"]}  # installed plugins may add more
    assert {"name": "TinyAlgo", "dist": "toy-plugin", "version": "0.3.0"}.items() <= rows["TinyAlgo"].items()


def test_check_builds_the_model_and_reports_parameters(tmp_path, site):
    write(tmp_path / "toy.toml", CONFIG)
    result = run(["toy.toml", "--check"], tmp_path, site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "toy.toml: OK, model TinyAlgo with 216 parameters (216 trainable)"
    result = run(["toy.toml", "--check", "--cfg-options", "model.backbone.depth=1"], tmp_path, site)
    assert "72 parameters" in result.stdout


def test_check_builds_the_hooks_and_names_a_bad_value(tmp_path, site):
    # no [data.train]: --check reports that, and with it every other problem it finds
    write(tmp_path / "toy.toml", CONFIG + '[runner]\nmax_epochs = 1\n[[hooks]]\ntype = "TinyHook"\nevery = 2\n')
    result = run(["toy.toml", "--check"], tmp_path, site)
    assert result.returncode == 2
    assert "missing the training dataset" in result.stderr and "hooks.0" not in result.stderr
    result = run(["toy.toml", "--check", "--cfg-options", "hooks.0.every=0"], tmp_path, site)
    assert result.returncode == 2
    assert ("hooks.0: TinyHook (toy-plugin 0.3.0) could not be built: ValueError: TinyHook: every must be >= 1, "
            "got 0") in result.stderr
    assert "Traceback" not in result.stderr


def test_show_config_prints_the_resolved_config(tmp_path, site):
    write(tmp_path / "_base_" / "model.toml", CONFIG)
    write(tmp_path / "child.toml", '_base_ = ["_base_/model.toml"]\n[model.backbone]\nwidth = 4\n')
    result = run(["show-config", "child.toml", "--set", "model.temperature=0.5"], tmp_path, site)
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(result.stdout) == {
        "model": {"type": "TinyAlgo", "temperature": 0.5, "backbone": {"type": "TinyBackbone", "depth": 3, "width": 4}}
    }


@pytest.mark.parametrize(
    ("files", "args", "expected"),
    [
        ({"bad.toml": "[model\ntype = 1\n"}, ["bad.toml", "--check"],
         "error: bad.toml:1:7: invalid TOML: Expected ']' at the end of a table declaration in line '[model'"),
        ({"c.toml": '_base_ = "nowhere.toml"\n'}, ["c.toml", "--check"],
         "error: c.toml: _base_: base file 'nowhere.toml' not found"),
        ({"c.toml": '[model]\ntype = "TinyAlgoo"\n'}, ["c.toml", "--check"],
         "error: c.toml: model.type: unknown algorithms type 'TinyAlgoo'; did you mean 'TinyAlgo'?"),
        ({"c.toml": CONFIG}, ["c.toml", "--check", "--cfg-options", "model.backbone.depth=[1,"],
         "error: c.toml: bad --cfg-options 'model.backbone.depth=[1,': '[1,' is not a valid TOML value"),
        ({"c.toml": CONFIG}, ["c.toml", "--check", "--cfg-options", "model.type.x=1"],
         "error: c.toml: model.type.x: bad --cfg-options 'model.type.x=1': model.type is a string"),
        ({"c.toml": CONFIG}, ["c.toml", "--check", "--set", "model.backbone.depht=1"],
         "error: --cfg-options: model.backbone.depht: unknown argument of TinyBackbone (toy-plugin 0.3.0); "
         "did you mean 'depth'?"),
        ({}, ["missing.toml", "--check"], "error: missing.toml: config file not found"),
        ({}, ["list", "bogus"], "error: unknown component kind 'bogus'"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_key_with_exit_2(files, args, expected, tmp_path, site):
    for name, text in files.items():
        write(tmp_path / name, text)
    result = run(args, tmp_path, site)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), lines[0]
    assert "Traceback" not in result.stderr


def test_training_without_check_says_what_is_missing(tmp_path, site):
    write(tmp_path / "toy.toml", CONFIG)
    result = run(["toy.toml"], tmp_path, site)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "error: toy.toml: runner: missing max_epochs: add [runner] max_epochs = N",
        "error: toy.toml: data: missing the training dataset: add a [data.train] table with a type",
    ]


def test_debug_shows_the_traceback(tmp_path, site):
    write(tmp_path / "c.toml", '[model]\ntype = "Nope"\n')
    result = run(["--debug", "c.toml", "--check"], tmp_path, site)
    assert result.returncode == 1 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_duplicate_names_are_refused_until_qualified(tmp_path, site):
    write_distribution(site, "rival-plugin", "9.0", entry_points={"selfsup.backbones": {"TinyBackbone": "toy_cli_plugin:TinyBackbone"}})
    write(tmp_path / "toy.toml", CONFIG)
    result = run(["toy.toml", "--check"], tmp_path, site)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1
    assert message.startswith("error: toy.toml: model.backbone.type: backbones 'TinyBackbone' is provided by ")
    assert "rival-plugin 9.0" in message and "toy-plugin 0.3.0" in message
    assert "say which one with a qualified type, e.g. type = '" in message
    listing = run(["list", "backbones"], tmp_path, site).stdout
    assert 'duplicate name: use type = "rival-plugin:TinyBackbone"' in listing
    result = run(["toy.toml", "--check", "--set", 'model.backbone.type="toy-plugin:TinyBackbone"'], tmp_path, site)
    assert result.returncode == 0, result.stderr
