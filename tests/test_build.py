"""Building components from config tables, with validation that reports every problem."""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import pytest

from selfsup_core.build import Builder, accepted_parameters, build, build_model, type_matches, validate
from selfsup_core.config import load_config
from selfsup_core.errors import ConfigError, PluginLoadError


class Backbone:
    def __init__(self, depth: int, out_indices: Sequence[int] = (4,), norm_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        self.depth, self.out_indices, self.norm_cfg, self.init_cfg = depth, out_indices, norm_cfg, init_cfg


class Neck:
    def __init__(self, in_channels: int, hid_channels: int, out_channels: int, with_bias: bool = False):
        self.in_channels, self.hid_channels, self.out_channels = in_channels, hid_channels, out_channels


class Head:
    def __init__(self, temperature: float = 0.1, mode: Literal["mean", "sum"] = "mean"):
        self.temperature, self.mode = temperature, mode


class Algo:
    __selfsup_arg_kinds__ = {"predictor": "necks"}

    def __init__(self, backbone, neck=None, head=None, predictor=None, target_neck=None, pipelines=None):
        self.backbone, self.neck, self.head = backbone, neck, head
        self.predictor, self.target_neck, self.pipelines = predictor, target_neck, pipelines


class Flip:
    def __init__(self, p: float = 0.5):
        self.p = p


@pytest.fixture
def components(selfsup_registries):
    selfsup_registries["backbones"].register("ResNet", Backbone)
    selfsup_registries["necks"].register("NonLinearNeck", Neck)
    selfsup_registries["heads"].register("ContrastiveHead", Head)
    selfsup_registries["algorithms"].register("SimCLR", Algo)
    selfsup_registries["transforms"].register("RandomHorizontalFlip", Flip)
    return selfsup_registries


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # errors show paths relative to the working directory


def _write(tmp_path, text, name="simclr.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nested_tables_are_built_by_the_kind_their_key_names(components):
    model = build(
        {
            "type": "SimCLR",
            "backbone": {"type": "ResNet", "depth": 18, "norm_cfg": {"type": "BN"}, "init_cfg": {"type": "Kaiming"}},
            "neck": {"type": "NonLinearNeck", "in_channels": 512, "hid_channels": 2048, "out_channels": 128},
            "head": {"type": "ContrastiveHead", "temperature": 0.2},
            "predictor": {"type": "NonLinearNeck", "in_channels": 1, "hid_channels": 2, "out_channels": 3},
            "target_neck": {"type": "NonLinearNeck", "in_channels": 4, "hid_channels": 5, "out_channels": 6},
            "pipelines": [[{"type": "RandomHorizontalFlip", "p": 1.0}], [{"type": "RandomHorizontalFlip"}]],
        },
        "algorithms",
    )
    assert isinstance(model, Algo)
    assert model.backbone.depth == 18
    assert model.backbone.norm_cfg == {"type": "BN"}  # *_cfg tables stay data
    assert model.backbone.init_cfg == {"type": "Kaiming"}
    assert model.neck.hid_channels == 2048 and model.head.temperature == 0.2
    assert model.predictor.out_channels == 3 and model.target_neck.out_channels == 6
    assert [[t.p for t in group] for group in model.pipelines] == [[1.0], [0.5]]


def test_every_problem_is_reported_in_one_error_with_file_and_key(components, tmp_path):
    path = _write(
        tmp_path,
        """
[model]
type = "SimCLR"
[model.backbone]
type = "ResNet"
depth = "50"
[model.neck]
type = "NonLinearNeck"
in_channels = 512
hid_channel = 2048
out_channels = 128
[model.head]
type = "ContrastiveHead"
mode = "max"
""",
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as info:
        build_model(config)
    lines = str(info.value).splitlines()
    assert lines == [
        "simclr.toml: model.backbone.depth: ResNet (<in-process>) expects int, got string '50'",
        "simclr.toml: model.neck.hid_channel: unknown argument of NonLinearNeck (<in-process>); did you mean 'hid_channels'?",
        "simclr.toml: model.neck: missing required argument 'hid_channels' of NonLinearNeck (<in-process>)",
        "simclr.toml: model.head.mode: ContrastiveHead (<in-process>) expects Literal['mean', 'sum'], got string 'max'",
    ]
    assert len(info.value.problems) == 4


def test_problem_names_the_base_file_that_set_the_key(components, tmp_path):
    (tmp_path / "_base_").mkdir()
    _write(tmp_path, '[model]\ntype = "SimCLR"\n[model.backbone]\ntype = "ResNet"\ndepth = 18\nfrozen = 1\n',
           "_base_/model.toml")
    path = _write(tmp_path, '_base_ = "_base_/model.toml"\n[model.backbone]\ndepth = 50\n')
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path))
    assert str(info.value) == (
        "_base_/model.toml: model.backbone.frozen: unknown argument of ResNet "
        "(<in-process>); it takes depth, out_indices, norm_cfg, init_cfg"
    )
    with pytest.raises(ConfigError) as info:
        build_model(load_config(path, ["model.backbone.depth=1.5"]))
    assert str(info.value).splitlines() == [
        "_base_/model.toml: model.backbone.frozen: unknown argument of ResNet (<in-process>); "
        "it takes depth, out_indices, norm_cfg, init_cfg",
        "--cfg-options: model.backbone.depth: ResNet (<in-process>) expects int, got float 1.5",
    ]


def test_unknown_type_suggests_and_names_the_key(components):
    with pytest.raises(ConfigError) as info:
        build({"type": "SimCLR", "backbone": {"type": "ResNt", "depth": 1}}, "algorithms", path="model")
    assert str(info.value).startswith(
        "<config>: model.backbone.type: unknown backbones type 'ResNt'; did you mean 'ResNet'?"
    )


def test_types_are_looked_up_in_every_kind_under_unknown_keys(components, selfsup_registries):
    built = build({"type": "SimCLR", "backbone": {"type": "ResNet", "depth": 1},
                   "head": {"extra": {"type": "RandomHorizontalFlip"}}}, "algorithms")
    assert isinstance(built.head["extra"], Flip)
    selfsup_registries["heads"].register("RandomHorizontalFlip", Head)
    with pytest.raises(ConfigError, match="ambiguous here: it names heads and transforms"):
        build({"type": "SimCLR", "backbone": {"type": "ResNet", "depth": 1},
               "head": {"extra": {"type": "RandomHorizontalFlip"}}}, "algorithms")


def test_constructor_errors_name_the_key_and_chain_the_cause(components, selfsup_registries):
    class Picky:
        def __init__(self, depth: int):
            raise ValueError(f"depth must be 18 or 50, not {depth}")

    selfsup_registries["backbones"].register("Picky", Picky)
    with pytest.raises(ConfigError) as info:
        build({"type": "SimCLR", "backbone": {"type": "Picky", "depth": 3}}, "algorithms", path="model")
    assert str(info.value) == (
        "<config>: model.backbone: Picky (<in-process>) could not be built: ValueError: depth must be 18 or 50, not 3"
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_a_broken_plugin_fails_the_config_that_needs_it_with_the_original_error(selfsup_site):
    selfsup_site.add(
        "broken-plugin",
        entry_points={"selfsup.backbones": {"Broken": "broken_build_mod:Net"}},
        modules={"broken_build_mod.py": "raise ImportError('needs libfoo')\n"},
    )
    selfsup_site.add(
        "good-plugin",
        entry_points={"selfsup.backbones": {"Good": "good_build_mod:Net"}},
        modules={"good_build_mod.py": "class Net:\n    def __init__(self, width: int = 1):\n        self.width = width\n"},
    )
    registries = selfsup_site.registries()
    assert build({"type": "Good", "width": 3}, "backbones", registries=registries).width == 3
    with pytest.raises(ConfigError) as info:
        build({"type": "Broken"}, "backbones", registries=registries, path="model.backbone")
    assert "model.backbone.type: backbones 'Broken' from broken-plugin 0.1.0 failed to load" in str(info.value)
    assert "ImportError: needs libfoo" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)


def test_default_args_fill_missing_arguments(components):
    neck = build({"type": "NonLinearNeck", "in_channels": 1, "out_channels": 2}, "necks",
                 default_args={"hid_channels": 7, "in_channels": 99})
    assert (neck.in_channels, neck.hid_channels) == (1, 7)


def test_table_without_type_is_refused(components):
    with pytest.raises(ConfigError, match="model: must be a table with a 'type' naming a algorithms component"):
        build({"depth": 1}, "algorithms", path="model")


def test_kwargs_are_followed_to_the_base_class(selfsup_registries):
    class Base:
        def __init__(self, depth: int = 18, width: int = 64):
            self.depth, self.width = depth, width

    class Child(Base):
        def __init__(self, extra: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

    class Open:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    params, open_ended = accepted_parameters(Child)
    assert list(params) == ["extra", "depth", "width"] and not open_ended
    assert accepted_parameters(Open) == ({}, False)  # object closes the chain

    def factory(a: int, **options):
        return a, options

    assert accepted_parameters(factory)[1] is True
    selfsup_registries["backbones"].register("Child", Child)
    with pytest.raises(ConfigError, match="unknown argument of Child .*did you mean 'width'"):
        build({"type": "Child", "widht": 3}, "backbones")
    assert build({"type": "Child", "width": 3, "extra": 1}, "backbones").width == 3


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (1, int, True), (True, int, False), (1, float, True), (1.5, int, False), ("a", str, True),
        (True, bool, True), (1, bool, False), ([1, 2], list[int], True), ([1, "x"], list[int], False),
        ((1,), Sequence[int], True), ("ab", Sequence[str], False), ({"a": 1}, dict, True),
        (None, Optional[int], True), (3, Optional[int], True), ("3", Optional[int], False),
        ("mean", Literal["mean", "sum"], True), ([1, 2], tuple[int, ...], True), (object(), Backbone, None),
    ],
)
def test_type_matches(value, annotation, expected):
    assert type_matches(value, annotation) is expected


def test_validate_checks_every_section_without_building(components, tmp_path):
    built = []

    class Recording(Flip):
        def __init__(self, p: float = 0.5):
            built.append(p)

    components["transforms"].register("Rec", Recording)
    path = _write(
        tmp_path,
        """
[model]
type = "SimCLR"
backbone = { type = "ResNet", depth = 18 }
[optimizer]
type = "SGD"
lr = 0.3
[data.train]
pipeline = [{ type = "Rec", p = 0.2 }, { type = "RandomHorizontalFlip", q = 1 }]
[[hooks]]
type = "NoSuchHook"
""",
    )
    with pytest.raises(ConfigError) as info:
        validate(load_config(path))
    assert str(info.value).splitlines() == [
        "simclr.toml: data.train.pipeline.1.q: unknown argument of RandomHorizontalFlip (<in-process>); "
        "it takes p",
        "simclr.toml: hooks.0.type: unknown hooks type 'NoSuchHook' (run 'selfsup-run list hooks' to see what is "
        "installed)",
    ]
    assert built == []  # nothing constructed; optimizer (not a registry kind) left to the trainer


def test_builder_collects_across_calls(components):
    builder = Builder()
    builder.plan({"type": "ResNet"}, "backbones", ("a",))
    builder.plan({"type": "ResNet", "depth": "x"}, "backbones", ("b",))
    with pytest.raises(ConfigError) as info:
        builder.raise_problems()
    assert [p.key for p in info.value.problems] == ["a", "b.depth"]


def test_plugin_load_error_class_is_public():
    assert issubclass(PluginLoadError, Exception)
