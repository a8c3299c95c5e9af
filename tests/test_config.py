"""TOML configs: ``_base_`` inheritance, ``_delete_``, origins, overrides and dumping.

Every test writes real files under ``tmp_path`` and runs with it as the working directory,
so file names in messages are short and exact (``child.toml``, ``configs/_base_/x.toml``).
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pytest

from selfsup_core._compat import tomllib
from selfsup_core.config import (
    OVERRIDE_ORIGIN,
    Config,
    apply_overrides,
    dump_toml,
    load_config,
    parse_override,
)
from selfsup_core.errors import ConfigError, SelfSupError


@pytest.fixture
def write(tmp_path, monkeypatch):
    """``write("dir/x.toml", text)`` writes a dedented file under the (current) tmp_path."""
    monkeypatch.chdir(tmp_path)

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


def config_error(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert isinstance(info.value, SelfSupError)
    return str(info.value)


def keys_anywhere(value) -> set:
    """Every table key at any depth, through tables and arrays."""
    found = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            found.add(key)
            found |= keys_anywhere(sub)
    elif isinstance(value, list):
        for sub in value:
            found |= keys_anywhere(sub)
    return found


BASE_MODEL = """
    [model]
    type = "SimCLR"

    [model.backbone]
    type = "ResNet"
    depth = 50
    out_indices = [4]
    norm_cfg = { type = "BN" }

    [model.neck]
    type = "NonLinearNeck"
    in_channels = 2048
    hid_channels = 2048
"""


# -- _base_ inheritance ---------------------------------------------------------------------
class TestInheritance:
    def test_single_base_as_string_merges_tables_key_by_key_and_replaces_lists(self, write):
        write("base.toml", BASE_MODEL)
        write(
            "child.toml",
            """
            _base_ = "base.toml"

            [model.backbone]
            depth = 18
            out_indices = [1, 2]

            [model.neck.norm_cfg]
            type = "SyncBN"
            """,
        )
        config = load_config("child.toml")
        assert config.filename == "child.toml"
        assert config.data == {
            "model": {
                "type": "SimCLR",
                "backbone": {"type": "ResNet", "depth": 18, "out_indices": [1, 2], "norm_cfg": {"type": "BN"}},
                "neck": {
                    "type": "NonLinearNeck",
                    "in_channels": 2048,
                    "hid_channels": 2048,
                    "norm_cfg": {"type": "SyncBN"},
                },
            }
        }
        assert "_base_" not in config
        assert config.origin(("model", "backbone", "depth")) == "child.toml"
        assert config.origin(("model", "backbone", "out_indices", 1)) == "child.toml"
        assert config.origin(("model", "backbone", "type")) == "base.toml"
        assert config.origin(("model", "backbone", "norm_cfg", "type")) == "base.toml"
        assert config.origin(("model", "neck", "norm_cfg", "type")) == "child.toml"

    def test_list_of_bases_relative_to_the_naming_file_with_nested_bases(self, write):
        write("configs/_base_/models/simclr.toml", BASE_MODEL)
        write(
            "configs/_base_/schedules/sgd-200e.toml",
            """
            _base_ = "../default_runtime.toml"
            optimizer = { type = "SGD", lr = 0.3, momentum = 0.9 }
            [runner]
            max_epochs = 200
            """,
        )
        write(
            "configs/_base_/default_runtime.toml",
            """
            seed = 0
            [runner]
            type = "EpochBasedRunner"
            max_epochs = 100

            [[hooks]]
            type = "CheckpointHook"
            interval = 10

            [[hooks]]
            type = "TextLoggerHook"
            """,
        )
        write(
            "configs/simclr/simclr_resnet18_1xb512-coslr-200e_fashion-mnist.toml",
            """
            _base_ = ["../_base_/models/simclr.toml", "../_base_/schedules/sgd-200e.toml"]
            [model.backbone]
            depth = 18

            [[hooks]]
            type = "OnlyHook"
            """,
        )
        child = "configs/simclr/simclr_resnet18_1xb512-coslr-200e_fashion-mnist.toml"
        config = load_config(child)
        assert config.data == {
            "model": {
                "type": "SimCLR",
                "backbone": {"type": "ResNet", "depth": 18, "out_indices": [4], "norm_cfg": {"type": "BN"}},
                "neck": {"type": "NonLinearNeck", "in_channels": 2048, "hid_channels": 2048},
            },
            "seed": 0,
            "runner": {"type": "EpochBasedRunner", "max_epochs": 200},
            "optimizer": {"type": "SGD", "lr": 0.3, "momentum": 0.9},
            "hooks": [{"type": "OnlyHook"}],  # arrays of tables are replaced, not merged
        }
        assert "_base_" not in keys_anywhere(config.data)
        assert config.origin(("seed",)) == "configs/_base_/default_runtime.toml"
        assert config.origin(("runner", "type")) == "configs/_base_/default_runtime.toml"
        assert config.origin(("runner", "max_epochs")) == "configs/_base_/schedules/sgd-200e.toml"
        assert config.origin(("optimizer", "lr")) == "configs/_base_/schedules/sgd-200e.toml"
        assert config.origin(("model", "neck", "in_channels")) == "configs/_base_/models/simclr.toml"
        assert config.origin(("model", "backbone", "depth")) == child
        assert config.origin(("hooks", 0, "type")) == child
        assert config.origin(("hooks", 1)) == child  # stale records of the base's hooks are gone

    def test_bases_resolve_the_same_from_another_working_directory(self, write, tmp_path, monkeypatch):
        write("cfg/_base_/a.toml", "x = 1\n")
        write("cfg/run/child.toml", '_base_ = "../_base_/a.toml"\ny = 2\n')
        monkeypatch.chdir(tmp_path / "cfg" / "_base_")
        assert load_config(tmp_path / "cfg" / "run" / "child.toml").data == {"x": 1, "y": 2}

    def test_empty_base_list_and_file_without_base(self, write):
        write("a.toml", "_base_ = []\nx = 1\n")
        write("b.toml", "x = [1, 2]\n")
        assert load_config("a.toml").data == {"x": 1}
        assert load_config("b.toml").data == {"x": [1, 2]}

    def test_two_bases_defining_the_same_top_level_key(self, write):
        write("_base_/a.toml", "[optimizer]\nlr = 0.1\n")
        write("_base_/b.toml", "[optimizer]\nmomentum = 0.9\n")
        write("child.toml", '_base_ = ["_base_/a.toml", "_base_/b.toml"]\n')
        assert config_error("child.toml") == (
            "child.toml: optimizer: defined in two bases, _base_/a.toml and _base_/b.toml; "
            "keep it in one base only"
        )

    @pytest.mark.parametrize("value", ["3", "[1]", '["a.toml", 2]', "{ a = 1 }"])
    def test_base_must_be_paths(self, write, value):
        write("child.toml", f"_base_ = {value}\n")
        assert config_error("child.toml") == "child.toml: _base_: must be a path or a list of paths to TOML files"


# -- _delete_ -------------------------------------------------------------------------------
class TestDelete:
    def test_delete_replaces_the_inherited_table(self, write):
        write("base.toml", BASE_MODEL)
        write(
            "child.toml",
            """
            _base_ = "base.toml"
            [model.backbone]
            _delete_ = true
            type = "VisionTransformer"
            arch = "small"
            """,
        )
        config = load_config("child.toml")
        assert config.data["model"]["backbone"] == {"type": "VisionTransformer", "arch": "small"}
        assert config.data["model"]["neck"]["in_channels"] == 2048  # siblings still merged
        assert "_delete_" not in keys_anywhere(config.data)
        # the old keys are gone, and so are their records: the nearest record is the child's
        assert config.origin(("model", "backbone", "depth")) == "child.toml"
        assert config.origin(("model", "backbone", "norm_cfg", "type")) == "child.toml"
        assert config.origin(("model", "neck", "type")) == "base.toml"

    def test_delete_false_merges_and_is_dropped(self, write):
        write("base.toml", "[opt]\nlr = 0.1\nmomentum = 0.9\n")
        write("child.toml", '_base_ = "base.toml"\n[opt]\n_delete_ = false\nlr = 0.3\n')
        assert load_config("child.toml").data == {"opt": {"lr": 0.3, "momentum": 0.9}}

    def test_delete_never_appears_in_the_result(self, write):
        write("base.toml", "[[hooks]]\ntype = 'A'\n")
        write(
            "child.toml",
            """
            _base_ = "base.toml"

            [fresh]               # no such table in the base
            _delete_ = true
            a = 1
            inner = { _delete_ = true, b = 2 }

            [fresh.deeper]
            _delete_ = true
            c = 3

            [[hooks]]
            _delete_ = true
            type = "X"

            [[hooks]]
            type = "Y"
            [hooks.cfg]
            _delete_ = true
            k = 1
            [[hooks.sub]]
            _delete_ = false
            z = [{ _delete_ = true, w = 0 }]
            """,
        )
        config = load_config("child.toml")
        assert config.data == {
            "fresh": {"a": 1, "inner": {"b": 2}, "deeper": {"c": 3}},
            "hooks": [{"type": "X"}, {"type": "Y", "cfg": {"k": 1}, "sub": [{"z": [{"w": 0}]}]}],
        }
        assert "_delete_" not in keys_anywhere(config.data)
        assert "_delete_" not in config.to_toml()

    def test_delete_in_a_file_without_bases(self, write):
        write("solo.toml", "[model]\n_delete_ = true\ntype = 'M'\n[[hooks]]\n_delete_ = true\n")
        assert load_config("solo.toml").data == {"model": {"type": "M"}, "hooks": [{}]}

    def test_delete_must_be_a_boolean(self, write):
        write("base.toml", BASE_MODEL)
        write("child.toml", '_base_ = "base.toml"\n[model.backbone]\n_delete_ = "yes"\n')
        assert config_error("child.toml") == "child.toml: model.backbone._delete_: must be true or false"

    @pytest.mark.parametrize(
        "base_value, kind",
        [('"ResNet"', "a string"), ("50", "an integer"), ("0.5", "a float"), ("[1, 2]", "an array"), ("true", "a boolean")],
    )
    def test_table_over_a_scalar_needs_delete(self, write, base_value, kind):
        write("base.toml", f"[model]\nbackbone = {base_value}\n")
        write("child.toml", '_base_ = "base.toml"\n[model.backbone]\ndepth = 18\n')
        assert config_error("child.toml") == (
            f"child.toml: model.backbone: is a table here but {kind} in base.toml; "
            "set _delete_ = true in this table to replace it"
        )
        write("child.toml", '_base_ = "base.toml"\n[model.backbone]\n_delete_ = true\ndepth = 18\n')
        config = load_config("child.toml")
        assert config.data == {"model": {"backbone": {"depth": 18}}}
        assert config.origin(("model", "backbone")) == "child.toml"

    def test_scalar_over_a_table_replaces_it(self, write):
        write("base.toml", BASE_MODEL)
        write("child.toml", '_base_ = "base.toml"\n[model]\nneck = "none"\n')
        config = load_config("child.toml")
        assert config.data["model"]["neck"] == "none"
        assert config.origin(("model", "neck", "in_channels")) == "child.toml"


# -- errors while loading -------------------------------------------------------------------
class TestLoadErrors:
    def test_cycle_of_two_files(self, write):
        write("a.toml", '_base_ = "b.toml"\nx = 1\n')
        write("b.toml", '_base_ = ["c.toml", "a.toml"]\ny = 1\n')
        write("c.toml", "z = 1\n")
        assert config_error("a.toml") == (
            "b.toml: _base_.1: _base_ files include each other in a cycle: a.toml -> b.toml -> a.toml"
        )

    def test_file_naming_itself(self, write):
        write("sub/a.toml", '_base_ = "../sub/a.toml"\n')
        assert config_error("sub/a.toml") == (
            "sub/a.toml: _base_: _base_ files include each other in a cycle: sub/a.toml -> sub/a.toml"
        )

    def test_a_shared_base_is_not_a_cycle(self, write):
        write("common.toml", "seed = 1\n")
        write("mid.toml", '_base_ = "common.toml"\n[model]\ntype = "M"\n')
        write("top.toml", '_base_ = ["mid.toml"]\n[data]\ntype = "D"\n')
        assert load_config("top.toml").data == {"seed": 1, "model": {"type": "M"}, "data": {"type": "D"}}

    def test_missing_base_names_the_including_file_key_and_path(self, write, tmp_path):
        write("configs/_base_/a.toml", "x = 1\n")
        write("configs/run/child.toml", '_base_ = ["../_base_/a.toml", "../_base_/missing.toml"]\n')
        looked_for = (tmp_path / "configs" / "_base_" / "missing.toml").resolve()
        assert config_error("configs/run/child.toml") == (
            f"configs/run/child.toml: _base_.1: base file '../_base_/missing.toml' not found "
            f"(looked for {looked_for}); _base_ paths are relative to the file that names them"
        )

    def test_missing_base_of_a_base(self, write, tmp_path):
        write("mid.toml", '_base_ = "gone.toml"\n')
        write("child.toml", '_base_ = "mid.toml"\n')
        assert config_error("child.toml") == (
            f"mid.toml: _base_: base file 'gone.toml' not found (looked for {(tmp_path / 'gone.toml').resolve()}); "
            "_base_ paths are relative to the file that names them"
        )

    @pytest.mark.parametrize(
        "text, expected",
        [
            ("a = 1\nb = = 2\n", "bad.toml:2:5: invalid TOML: Invalid value in line 'b = = 2'"),
            ("[model]\ntype = ResNet\n", "bad.toml:2:8: invalid TOML: Invalid value in line 'type = ResNet'"),
            ("a = 1\na = 2\n", "bad.toml:2:6: invalid TOML: Cannot overwrite a value in line 'a = 2'"),
            ("a = 1\nb = [1,\n", "bad.toml:3:1: invalid TOML: Invalid value at end of document"),
            ('a = "open', "bad.toml:1:10: invalid TOML: Unterminated string at end of document in line 'a = \"open'"),
        ],
    )
    def test_malformed_toml_is_one_line_with_line_and_column(self, write, text, expected):
        write("bad.toml", text)
        assert config_error("bad.toml") == expected

    def test_malformed_toml_in_a_base_names_the_base(self, write):
        write("_base_/x.toml", "[model\n")
        write("child.toml", '_base_ = "_base_/x.toml"\n')
        message = config_error("child.toml")
        assert message.startswith("_base_/x.toml:1:7: invalid TOML: ")
        assert "\n" not in message

    def test_missing_config_file(self, write, tmp_path):
        assert config_error("nope.toml") == f"nope.toml: config file not found ({tmp_path / 'nope.toml'})"

    def test_unreadable_config_file(self, write):
        Path("dir.toml").mkdir()
        message = config_error("dir.toml")
        assert message.startswith("dir.toml: cannot read config file: IsADirectoryError: ")
        assert "\n" not in message
        write("latin1.toml", "")
        Path("latin1.toml").write_bytes(b"name = '\xe9'\n")
        assert config_error("latin1.toml").startswith("latin1.toml: cannot read config file: UnicodeDecodeError: ")


# -- origins --------------------------------------------------------------------------------
class TestOrigins:
    def test_origin_and_problem_for_base_child_and_override(self, write):
        write("base.toml", BASE_MODEL)
        write("child.toml", '_base_ = "base.toml"\n[model.neck]\nin_channels = 512\n')
        config = load_config("child.toml", ["model.backbone.depth=18"])
        assert config.origin(("model", "backbone", "type")) == "base.toml"
        assert config.origin(("model", "neck", "in_channels")) == "child.toml"
        assert config.origin(("model", "backbone", "depth")) == OVERRIDE_ORIGIN == "--cfg-options"
        # a key nobody set takes its nearest recorded ancestor, else the config file itself
        assert config.origin(("model", "backbone", "norm_cfg", "momentum")) == "base.toml"
        assert config.origin(("nothing", "here")) == "child.toml"
        assert config.origin(()) == "child.toml"

        assert str(config.problem(("model", "neck", "in_channels"), "must be positive")) == (
            "child.toml: model.neck.in_channels: must be positive"
        )
        assert str(config.problem(["model", "backbone", "out_indices", 0], "bad index")) == (
            "base.toml: model.backbone.out_indices.0: bad index"
        )
        assert str(config.problem(("model", "backbone", "depth"), "unknown depth")) == (
            "--cfg-options: model.backbone.depth: unknown depth"
        )
        problem = config.problem(("model", "neck", "hid_channels"), "must be positive")
        assert (problem.file, problem.key, problem.message) == ("base.toml", "model.neck.hid_channels", "must be positive")
        assert str(ConfigError([problem, config.problem(("seed",), "missing")])) == (
            "base.toml: model.neck.hid_channels: must be positive\nchild.toml: seed: missing"
        )

    def test_override_replacing_a_table_forgets_the_old_records(self, write):
        write("base.toml", BASE_MODEL)
        config = load_config("base.toml", ['model.backbone={type = "ViT"}'])
        assert config.data["model"]["backbone"] == {"type": "ViT"}
        assert config.origin(("model", "backbone", "type")) == "--cfg-options"
        assert config.origin(("model", "backbone", "depth")) == "--cfg-options"
        assert config.origin(("model", "neck", "type")) == "base.toml"

    def test_tables_created_by_an_override_come_from_the_override(self, write):
        write("base.toml", BASE_MODEL)
        config = load_config("base.toml", ["modle.backbone.depth=18", "model.head.temperature=0.1"])
        assert config.data["modle"] == {"backbone": {"depth": 18}}
        assert config.data["model"]["head"] == {"temperature": 0.1}
        assert config.origin(("modle",)) == "--cfg-options"
        assert config.origin(("modle", "backbone")) == "--cfg-options"
        assert config.origin(("model", "head")) == "--cfg-options"
        assert config.origin(("model",)) == "base.toml"

    def test_negative_index_override_is_recorded_at_the_real_index(self, write):
        write("base.toml", "[[hooks]]\ntype = 'A'\n[[hooks]]\ntype = 'B'\n")
        config = load_config("base.toml", ["hooks.-1.interval=5"])
        assert config.data["hooks"] == [{"type": "A"}, {"type": "B", "interval": 5}]
        assert config.origin(("hooks", 1, "interval")) == "--cfg-options"
        assert config.origin(("hooks", 1, "type")) == "base.toml"


# -- overrides ------------------------------------------------------------------------------
class TestOverrides:
    @pytest.mark.parametrize(
        "text, keys, value",
        [
            ("model.backbone.depth=18", ("model", "backbone", "depth"), 18),
            ("seed=-5", ("seed",), -5),
            ("optimizer.lr=0.3", ("optimizer", "lr"), 0.3),
            ("optimizer.lr=1e-3", ("optimizer", "lr"), 0.001),
            ("optimizer.lr=5E2", ("optimizer", "lr"), 500.0),
            ("a=true", ("a",), True),
            ("a=false", ("a",), False),
            ('name="two words"', ("name",), "two words"),
            ("name='C:\\path'", ("name",), "C:\\path"),
            ('name=""', ("name",), ""),
            ("model.backbone.type=ResNet", ("model", "backbone", "type"), "ResNet"),
            ("data.root=data/fashion-mnist", ("data", "root"), "data/fashion-mnist"),
            ("version=1.0.0", ("version",), "1.0.0"),
            ("out_indices=[1, 2]", ("out_indices",), [1, 2]),
            ('mixed=[1, "a", 0.5, true]', ("mixed",), [1, "a", 0.5, True]),
            ('model.neck={type = "NonLinearNeck", in_channels = 512}', ("model", "neck"),
             {"type": "NonLinearNeck", "in_channels": 512}),
            ("a.1.b=2", ("a", 1, "b"), 2),
            ("a.-1.b=2", ("a", -1, "b"), 2),
            ("a.0=x", ("a", 0), "x"),
            ("  a.b  =  1  ", ("a", "b"), 1),
            ("url=http://x:80/p", ("url",), "http://x:80/p"),
        ],
    )
    def test_parse_override(self, text, keys, value):
        parsed_keys, parsed_value = parse_override(text)
        assert parsed_keys == keys
        assert parsed_value == value
        assert type(parsed_value) is type(value)  # 1 == 1.0 == True: check the type too
        if isinstance(value, list):
            assert [type(v) for v in parsed_value] == [type(v) for v in value]

    @pytest.mark.parametrize(
        "text, message",
        [
            ("optimizer.lr", "expected KEY=VALUE, e.g. optimizer.lr=0.3"),
            ("=1", "the key is empty or has an empty part between dots"),
            ("a..b=1", "the key is empty or has an empty part between dots"),
            ("a.=1", "the key is empty or has an empty part between dots"),
            ("a=", 'the value is empty; give a TOML value, e.g. name="" for an empty string'),
            ("a=  ", 'the value is empty; give a TOML value, e.g. name="" for an empty string'),
            ("a=[1,", "'[1,' is not a valid TOML value (Invalid value (at end of document))"),
            ('a="open', "'\"open' is not a valid TOML value (Unterminated string (at end of document))"),
            ("a=two words", "'two words' is not a valid TOML value (Invalid value (at line 1, column 5))"),
            ("a=1\nb=2", "'1\\nb=2' is more than one TOML value; give one value per KEY=VALUE"),
        ],
    )
    def test_parse_override_rejects(self, text, message):
        with pytest.raises(ValueError) as info:
            parse_override(text)
        assert str(info.value) == message

    def test_load_config_applies_overrides_in_order(self, write):
        write("base.toml", BASE_MODEL + "\n[[hooks]]\ntype = 'A'\n[[hooks]]\ntype = 'B'\n")
        write("child.toml", '_base_ = "base.toml"\n[optimizer]\ntype = "SGD"\nlr = 0.3\n')
        config = load_config(
            "child.toml",
            [
                "model.backbone.depth=18",
                "optimizer.lr=1e-3",
                "optimizer.lr=2e-3",  # later wins
                "model.backbone.type=VisionTransformer",
                "model.backbone.out_indices=[1, 2]",
                "model.neck={type = 'MoCoV2Neck', in_channels = 512}",
                "hooks.0.interval=5",
                'hooks.-1.type="Last"',
                "runner.max_epochs=10",
                "model.backbone.norm_cfg.requires_grad=false",
            ],
        )
        assert config.data == {
            "model": {
                "type": "SimCLR",
                "backbone": {
                    "type": "VisionTransformer",
                    "depth": 18,
                    "out_indices": [1, 2],
                    "norm_cfg": {"type": "BN", "requires_grad": False},
                },
                "neck": {"type": "MoCoV2Neck", "in_channels": 512},
            },
            "hooks": [{"type": "A", "interval": 5}, {"type": "Last"}],
            "optimizer": {"type": "SGD", "lr": 0.002},
            "runner": {"max_epochs": 10},
        }

    @pytest.mark.parametrize(
        "override, line",
        [
            ("optimizer", "child.toml: bad --cfg-options 'optimizer': expected KEY=VALUE, e.g. optimizer.lr=0.3"),
            ("a..b=1", "child.toml: bad --cfg-options 'a..b=1': the key is empty or has an empty part between dots"),
            ("a=", "child.toml: bad --cfg-options 'a=': the value is empty; "
                   'give a TOML value, e.g. name="" for an empty string'),
            ("a=[1,", "child.toml: bad --cfg-options 'a=[1,': '[1,' is not a valid TOML value "
                      "(Invalid value (at end of document))"),
            ("hooks.2.type=X", "child.toml: hooks.2.type: bad --cfg-options 'hooks.2.type=X': "
                               "index 2 is out of range (hooks has 2 items)"),
            ("hooks.-3.type=X", "child.toml: hooks.-3.type: bad --cfg-options 'hooks.-3.type=X': "
                                "index -3 is out of range (hooks has 2 items)"),
            ("optimizer.lr.x=1", "child.toml: optimizer.lr.x: bad --cfg-options 'optimizer.lr.x=1': "
                                 "optimizer.lr is a float, not a table or array"),
            ("seed.x=1", "child.toml: seed.x: bad --cfg-options 'seed.x=1': seed is an integer, not a table or array"),
            ("hooks.first.type=X", "child.toml: hooks.first.type: bad --cfg-options 'hooks.first.type=X': "
                                   "hooks is an array; index it with a number, not 'first'"),
            ("hooks.01.type=X", "child.toml: hooks.01.type: bad --cfg-options 'hooks.01.type=X': "
                                "hooks is an array; index it with a number, not '01'"),
        ],
    )
    def test_bad_override_is_one_line_naming_file_and_key(self, write, override, line):
        write("child.toml", "seed = 1\n[optimizer]\nlr = 0.1\n[[hooks]]\ntype = 'A'\n[[hooks]]\ntype = 'B'\n")
        assert config_error("child.toml", [override]) == line

    def test_all_bad_overrides_are_reported_together(self, write):
        write("child.toml", "seed = 1\n[[hooks]]\ntype = 'A'\n")
        overrides = ["seed=2", "nokey", "hooks.5.type=X", "model.depth=18", "seed.x=1", "a=[1,"]
        with pytest.raises(ConfigError) as info:
            load_config("child.toml", overrides)
        assert str(info.value).split("\n") == [
            "child.toml: bad --cfg-options 'nokey': expected KEY=VALUE, e.g. optimizer.lr=0.3",
            "child.toml: hooks.5.type: bad --cfg-options 'hooks.5.type=X': index 5 is out of range (hooks has 1 items)",
            "child.toml: seed.x: bad --cfg-options 'seed.x=1': seed is an integer, not a table or array",
            "child.toml: bad --cfg-options 'a=[1,': '[1,' is not a valid TOML value (Invalid value (at end of document))",
        ]
        assert [(p.file, p.key) for p in info.value.problems] == [
            ("child.toml", None),
            ("child.toml", "hooks.5.type"),
            ("child.toml", "seed.x"),
            ("child.toml", None),
        ]

    def test_apply_overrides_on_a_config_object(self):
        config = Config({"a": [{"b": 1}, {"b": 2}], "t": {"0": "zero"}}, "mem.toml")
        apply_overrides(config, ["a.1.b=20", "a.0={c = 3}", "t.0=nil", "new.list=[]"])
        assert config.data == {"a": [{"c": 3}, {"b": 20}], "t": {"0": "nil"}, "new": {"list": []}}
        assert config.origin(("a", 1, "b")) == config.origin(("t", "0")) == config.origin(("new",)) == "--cfg-options"
        apply_overrides(config, [])
        with pytest.raises(ConfigError) as info:
            apply_overrides(config, ["a.x=1"])
        assert str(info.value) == "mem.toml: a.x: bad --cfg-options 'a.x=1': a is an array; index it with a number, not 'x'"


# -- dumping --------------------------------------------------------------------------------
ROUND_TRIP = {
    "title": "SimCLR",
    "seed": 0,
    "negative": -(2**40),
    "flags": {"on": True, "off": False},
    "floats": [0.1, -0.0, 1e-300, 1e16, 2.5e-08, math.inf, -math.inf],
    "mixed": [1, "two", 3.0, True, [4, [5]], {"six": 6}, []],
    "nested_lists": [[1, 2], ["a"], []],
    "empty_list": [],
    "empty_table": {},
    "strings": {
        "quotes": 'say "hi" and \'bye\'',
        "backslash": "C:\\data\\new",
        "newline": "line one\nline two\r\n",
        "tab": "a\tb",
        "controls": "nul\x00 bell\x07 esc\x1b del\x7f",
        "unicode": "ünïcødé ✓ 数据 🙂",
        "empty": "",
        "looks_like_toml": "[table]\nkey = 1 # not a comment",
    },
    "keys": {"with.dot": 1, "with space": 2, "": 3, "clé": 4, "quote\"d": 5, "plain-key_1": 6, "123": 7},
    "model": {
        "type": "SimCLR",
        "backbone": {"type": "ResNet", "depth": 50, "norm_cfg": {"type": "SyncBN"}, "init_cfg": {}},
        "neck": {"type": "NonLinearNeck", "in_channels": 2048},
    },
    "hooks": [
        {"type": "CheckpointHook", "interval": 10},
        {"type": "Custom", "cfg": {"a": {"b": 1}}, "sub": [{"x": 1}, {"x": 2, "y": {"z": "deep"}}], "after": 1},
        {},
    ],
    "table.with.dots": {"inner key": {"leaf": [1.5]}},
    "last": "scalars after tables in the source order still round-trip",
}


class TestDump:
    def test_round_trip(self):
        text = dump_toml(ROUND_TRIP)
        assert tomllib.loads(text) == ROUND_TRIP
        assert "\n\n\n" not in text and not text.startswith("\n") and text.endswith("\n")

    def test_nan(self):
        loaded = tomllib.loads(dump_toml({"x": math.nan, "t": {"y": [1.0, -math.nan]}}))
        assert math.isnan(loaded["x"])
        assert loaded["t"]["y"][0] == 1.0 and math.isnan(loaded["t"]["y"][1])

    def test_layout(self):
        data = {
            "model": {"type": "SimCLR", "backbone": {"depth": 50}},
            "hooks": [{"type": "A"}, {"type": "B", "cfg": {"k": "v"}}],
            "seed": 1,
            "lr": 0.5,
            "tags": ["a", 1],
            "mode": {"on": True},
            "dotted.key": "x",
        }
        assert dump_toml(data) == textwrap.dedent(
            """\
            seed = 1
            lr = 0.5
            tags = ["a", 1]
            "dotted.key" = "x"

            [model]
            type = "SimCLR"

            [model.backbone]
            depth = 50

            [[hooks]]
            type = "A"

            [[hooks]]
            type = "B"

            [hooks.cfg]
            k = "v"

            [mode]
            on = true
            """
        )

    def test_empty(self):
        assert tomllib.loads(dump_toml({})) == {}

    @pytest.mark.parametrize("data", [{"a": None}, {"a": [1, None]}, {"t": {"a": None}}, {"h": [{"a": None}]}])
    def test_none_is_a_type_error(self, data):
        with pytest.raises(TypeError, match="cannot write a NoneType"):
            dump_toml(data)

    def test_config_to_toml_spells_out_the_inherited_config(self, write):
        write("base.toml", BASE_MODEL + "\n[[hooks]]\ntype = 'A'\n[hooks.cfg]\nk = 1\n")
        write("child.toml", '_base_ = "base.toml"\nname = "x \\"y\\""\n[model.backbone]\ndepth = 18\n')
        config = load_config("child.toml", ["extra.list=[1, 'a']"])
        text = config.to_toml()
        assert "_base_" not in text
        assert tomllib.loads(text) == config.data
        assert config.data["model"]["backbone"]["depth"] == 18
        assert config.data["name"] == 'x "y"'


# -- get / set ------------------------------------------------------------------------------
class TestGetSet:
    @pytest.fixture
    def config(self):
        data = {
            "model": {"backbone": {"type": "ResNet", "depth": 50, "out_indices": [2, 3]}},
            "hooks": [{"type": "A"}, {"type": "B"}],
            "lr": 0.1,
            "classes": {"0": "tee", "10": "ten"},
        }
        return Config(data, "mem.toml", {("model",): "base.toml", ("lr",): "mem.toml"})

    @pytest.mark.parametrize(
        "path, value",
        [
            ("model.backbone.depth", 50),
            (("model", "backbone", "depth"), 50),
            (["model", "backbone"], {"type": "ResNet", "depth": 50, "out_indices": [2, 3]}),
            ("model.backbone.out_indices.1", 3),
            ("model.backbone.out_indices.-1", 3),
            ("hooks.0.type", "A"),
            (("hooks", 1, "type"), "B"),
            ("hooks.-2.type", "A"),
            ("classes.0", "tee"),
            ("classes.10", "ten"),
            ("lr", 0.1),
        ],
    )
    def test_get(self, config, path, value):
        assert config.get(path) == value

    @pytest.mark.parametrize(
        "path, shown",
        [
            ("model.neck", "model.neck"),
            ("model.backbone.depth.x", "model.backbone.depth.x"),
            ("hooks.2.type", "hooks.2.type"),
            ("hooks.type", "hooks.type"),
            (("lr", 0), "lr.0"),
            ("classes.1", "classes.1"),
        ],
    )
    def test_get_missing(self, config, path, shown):
        assert config.get(path, None) is None
        assert config.get(path, "fallback") == "fallback"
        with pytest.raises(KeyError) as info:
            config.get(path)
        assert info.value.args == (shown,)

    def test_mapping_access(self, config):
        assert config["lr"] == 0.1
        assert "model" in config and "missing" not in config
        with pytest.raises(KeyError):
            config["missing"]

    def test_set_records_the_origin(self, config):
        config.set("model.backbone.depth", 18)
        config.set("model.neck.type", "NonLinearNeck", origin="plugin.toml")
        config.set(("hooks", -1, "interval"), 5, origin="hooks.toml")
        config.set("classes.0", "T-shirt")
        config.set("lr", {"base": 0.3})
        assert config.data == {
            "model": {
                "backbone": {"type": "ResNet", "depth": 18, "out_indices": [2, 3]},
                "neck": {"type": "NonLinearNeck"},
            },
            "hooks": [{"type": "A"}, {"type": "B", "interval": 5}],
            "lr": {"base": 0.3},
            "classes": {"0": "T-shirt", "10": "ten"},
        }
        assert config.origin(("model", "backbone", "depth")) == "--cfg-options"
        assert config.origin(("model", "backbone", "type")) == "base.toml"
        assert config.origin(("model", "neck")) == "plugin.toml"
        assert config.origin(("model", "neck", "type")) == "plugin.toml"
        assert config.origin(("hooks", 1, "interval")) == "hooks.toml"
        assert config.origin(("hooks", 1, "type")) == "mem.toml"
        assert config.origin(("classes", "0")) == "--cfg-options"
        assert config.origin(("lr", "base")) == "--cfg-options"
        assert config.get("model.neck.type") == "NonLinearNeck"

    @pytest.mark.parametrize(
        "path, message",
        [
            ("lr.x", "plugin.toml: lr.x: lr is a float, not a table or array"),
            ("model.backbone.type.x", "plugin.toml: model.backbone.type.x: model.backbone.type is a string, not a table or array"),
            ("hooks.5", "plugin.toml: hooks.5: index 5 is out of range (hooks has 2 items)"),
            ("hooks.x", "plugin.toml: hooks.x: hooks is an array; index it with a number, not 'x'"),
        ],
    )
    def test_set_errors(self, config, path, message):
        before = config.to_toml()
        with pytest.raises(ConfigError) as info:
            config.set(path, 1, origin="plugin.toml")
        assert str(info.value) == message
        assert config.to_toml() == before
