"""A config is data: a ``type`` that is an import path never runs code (issue 36, item 1).

Every component position (backbone, neck, head, memory, dataset, data source, transform,
hook, evaluator) gets a ``type`` that would run a command if it were imported or called
(``os:system``, ``subprocess:run``, ``builtins:eval``, ``importlib:import_module``, the class
``subprocess:Popen`` of the wrong kind, a module that acts on import); every command that
reads a config (``--check``, ``count-params``, ``show-config``, training, ``eval`` and
``migrate --check``) must end in one line with exit status 2 and leave the sentinel file
uncreated. Most runs are in-process (``cli.main``), a few are real ``selfsup-run`` processes.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from selfsup_core.cli import main
from selfsup_core.config import dump_toml

SCRIPT = Path(sys.executable).with_name("selfsup-run")
ON_IMPORT = "selfsup_sentinel_on_import"

BASE: dict[str, Any] = {
    "seed": 0,
    "model": {
        "type": "NPID", "neg_num": 4, "ensure_neg": False,
        "backbone": {"type": "ResNet", "depth": 18, "in_channels": 1, "stem_type": "cifar",
                     "base_channels": 4, "stem_channels": 4},
        "neck": {"type": "LinearNeck", "in_channels": 32, "out_channels": 8, "with_avg_pool": True},
        "head": {"type": "ContrastiveHead", "temperature": 0.07},
        "memory_bank": {"type": "SimpleMemory", "length": 16, "feat_dim": 8, "momentum": 0.5},
    },
    "data": {
        "samples_per_gpu": 8, "workers_per_gpu": 0,
        "train": {"type": "OneViewDataset", "pipeline": [{"type": "ToImage"}],
                  "data_source": {"type": "NumpyArrays", "file": "PLACEHOLDER"}},
    },
    "optimizer": {"type": "SGD", "lr": 0.01},
    "runner": {"max_epochs": 1, "device": "cpu"},
    "log_config": {"interval": 1, "progress": "none", "plot": False},
    "evaluation": {"interval": 0, "evaluators": [{"type": "KNN", "k": 2}]},
}

#: position name -> the key path of the table it replaces ("hooks" appends one hook).
POSITIONS: dict[str, tuple[Any, ...]] = {
    "backbone": ("model", "backbone"),
    "neck": ("model", "neck"),
    "head": ("model", "head"),
    "memory": ("model", "memory_bank"),
    "dataset": ("data", "train"),
    "data_source": ("data", "train", "data_source"),
    "transform": ("data", "train", "pipeline", 0),
    "hook": ("hooks", 0),
    "evaluator": ("evaluation", "evaluators", 0),
}
MODEL_POSITIONS = ("backbone", "neck", "head", "memory")


def payloads(sentinel: Path) -> dict[str, dict[str, Any]]:
    """type -> its table: each would create ``sentinel`` if imported, called or instantiated."""
    return {
        "os:system": {"command": f"touch {sentinel}"},
        "subprocess:run": {"args": ["touch", str(sentinel)]},
        "builtins:eval": {"source": f"open({str(sentinel)!r}, 'w').close()"},
        "importlib:import_module": {"name": ON_IMPORT},
        "subprocess:Popen": {"args": ["touch", str(sentinel)]},  # a class, of no component kind
    }


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A module that creates the sentinel when imported (on sys.path), tiny data, the sentinel path."""
    sentinel = tmp_path / "SENTINEL"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / f"{ON_IMPORT}.py").write_text(
        f"open({str(sentinel)!r}, 'w').close()\n\nclass Anything:\n    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.chdir(tmp_path)
    npz = tmp_path / "tiny.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 255, (16, 8, 8), dtype=np.uint8), labels=np.arange(16) % 2)
    yield {"root": tmp_path, "sentinel": sentinel, "npz": npz, "modules": modules}
    sys.modules.pop(ON_IMPORT, None)


def write_config(site: dict[str, Any], position: str | None, type_name: str | None, name: str = "bad.toml") -> Path:
    data = copy.deepcopy(BASE)
    data["data"]["train"]["data_source"]["file"] = str(site["npz"])
    if position is not None:
        table = {"type": type_name, **payloads(site["sentinel"]).get(type_name, {})}
        *parents, last = POSITIONS[position]
        node = data
        for key in parents:
            node = node.setdefault(key, [] if key == "hooks" else {})
        if isinstance(node, list) and last == len(node):
            node.append(table)
        else:
            node[last] = table
    path = site["root"] / name
    path.write_text(dump_toml(data), encoding="utf-8")
    return path


def commands(config: Path, work: Path) -> dict[str, list[str]]:
    return {
        "check": [str(config), "--check"],
        "count-params": ["count-params", str(config)],
        "show-config": ["show-config", str(config)],
        "train": [str(config), "--work-dir", str(work)],
        "eval": ["eval", str(config), "--work-dir", str(work)],
    }


def assert_refused(code: int, stderr: str, site: dict[str, Any], type_name: str, wanted: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(type_name) in lines[0], stderr
    assert wanted in lines[0], lines[0]
    assert not site["sentinel"].exists(), "a config ran code"


def test_the_valid_base_config_passes_check(site, capsys):
    assert main([str(write_config(site, None, None, name="good.toml")), "--check"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("command", ["check", "count-params", "show-config", "train", "eval"])
@pytest.mark.parametrize("position", list(POSITIONS))
def test_import_path_types_are_refused_before_anything_is_imported(site, capsys, position, command):
    work = site["root"] / "work"
    for type_name in [*payloads(site["sentinel"]), f"{ON_IMPORT}:Anything"]:
        config = write_config(site, position, type_name)
        code = main(commands(config, work)[command])
        assert_refused(code, capsys.readouterr().err, site, type_name, "is an import path")
        assert ON_IMPORT not in sys.modules
        assert not work.exists(), "a refused run left its work dir behind"


@pytest.mark.parametrize("position", list(POSITIONS))
def test_with_the_opt_in_functions_and_classes_of_the_wrong_kind_are_still_refused(site, capsys, position):
    work = site["root"] / "work"
    wanted = {"subprocess:Popen": "which is not"}
    chosen = ["check", "train"] + (["count-params", "eval"] if position in MODEL_POSITIONS else [])
    for type_name in payloads(site["sentinel"]):
        config = write_config(site, position, type_name)
        for command in chosen:
            code = main([*commands(config, work)[command], "--allow-import-paths"])
            assert_refused(code, capsys.readouterr().err, site, type_name, wanted.get(type_name, "not a class"))
            assert not work.exists()


def test_with_the_opt_in_a_class_of_the_right_kind_is_built(site, capsys):
    config = write_config(site, "neck", "torch.nn:Identity")
    assert main([str(config), "--check"]) == 2
    assert "pass --allow-import-paths" in capsys.readouterr().err
    assert main([str(config), "--check", "--allow-import-paths"]) == 0, capsys.readouterr().err


OLD_CONFIG = """\
model = dict(
    type='NPID',
    neg_num=4,
    backbone=dict(type='ResNet', depth=18, in_channels=1),
    neck=dict(type='LinearNeck', in_channels=512, out_channels=8, with_avg_pool=True),
    head=dict(type='ContrastiveHead', temperature=0.07),
    memory_bank=dict(type='SimpleMemory', length=16, feat_dim=8, momentum=0.5))
{extra}
"""


@pytest.mark.parametrize("type_name", ["os:system", "subprocess:run", "builtins:eval", "importlib:import_module",
                                       "subprocess:Popen"])
@pytest.mark.parametrize("where", ["backbone", "hook"])
def test_migrate_check_of_a_python_config_never_runs_its_types(site, capsys, type_name, where):
    args = ", ".join(f"{k}={v!r}" for k, v in payloads(site["sentinel"])[type_name].items())
    table = f"dict(type={type_name!r}, {args})"
    if where == "backbone":
        text = OLD_CONFIG.replace("dict(type='ResNet', depth=18, in_channels=1)", table).format(extra="")
    else:
        text = OLD_CONFIG.format(extra=f"custom_hooks = [{table}]")
    source = site["root"] / "old_config.py"
    source.write_text(text, encoding="utf-8")
    for extra in ([], ["--allow-import-paths"]):
        code = main(["migrate", str(source), "-o", str(site["root"] / "new.toml"), "--force", "--check", *extra])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2, err
        assert len(errors) == 1 and type_name in errors[0], err  # refused when written or when checked
        assert not site["sentinel"].exists()


def _run(*args: str, cwd: Path, modules: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(modules))
    env.pop("SELFSUP_DEBUG", None)
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_real_selfsup_run_processes_refuse_in_one_line(site):
    root, sentinel = site["root"], site["sentinel"]
    backbone = write_config(site, "backbone", "os:system", name="backbone.toml")
    hook = write_config(site, "hook", "subprocess:run", name="hook.toml")
    on_import = write_config(site, "transform", f"{ON_IMPORT}:Anything", name="on_import.toml")
    runs = [
        ((str(backbone), "--check"), "'os:system' is an import path"),
        ((str(hook), "--work-dir", str(root / "w")), "'subprocess:run' is an import path"),
        ((str(hook), "--work-dir", str(root / "w"), "--allow-import-paths"), "'subprocess:run' is a function"),
        (("show-config", str(on_import)), f"'{ON_IMPORT}:Anything' is an import path"),
    ]
    for args, wanted in runs:
        result = _run(*args, cwd=root, modules=site["modules"])
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and wanted in lines[0], result.stderr
        assert not sentinel.exists()
        assert not (root / "w").exists()
