"""Accepted nonsense and tracebacks of issue 34 end in one line with exit 2 (in-process
``selfsup-run CONFIG --check``): each case is an example of its kind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("selfsup_models")
pytest.importorskip("selfsup_data")

from selfsup_core.cli import main  # noqa: E402
from selfsup_core.config import load_config, parse_override  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIMCLR = ROOT / "examples" / "configs" / "simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The quick-start config on 6 grey 28x28 images (an .npz), width 4: a real model and data."""
    folder = tmp_path_factory.mktemp("tiny")
    np.savez(folder / "grey.npz", images=np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8),
             labels=np.arange(6) % 2)
    return ["--set", f'data.train.data_source={{type = "NumpyArrays", file = "{folder / "grey.npz"}"}}',
            "model.backbone.base_channels=4", "model.backbone.stem_channels=4", "model.neck.in_channels=32",
            "model.neck.hid_channels=8", "model.neck.out_channels=8", "data.samples_per_gpu=2"]


def check(capsys, *args):
    code = main([str(SIMCLR), "--check", *args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_the_tiny_config_passes_with_a_dry_batch(tiny, capsys):
    code, out, err = check(capsys, *tiny)
    assert code == 0, err
    assert "data.train: 6 samples, one batch of 2 ran through the model" in out


@pytest.mark.parametrize(("override", "expected"), [
    ("model.backbone.base_channels=0", "model.backbone.base_channels: must be >= 1, got 0"),
    ("model.neck.out_channels=0", "model.neck.out_channels: must be >= 1, got 0"),
    ("model.head.temperature=-0.1", "model.head.temperature: must be > 0, got -0.1"),
    ("data.train.pipelines.0.0.size=0", "data.train.pipelines.0.0.size: must be >= 1, got 0"),
    ("data.train.pipelines.0.0.scale=[1.0, 0.2]",
     "data.train.pipelines.0.0.scale: must be [low, high] with 0 < low <= high, got [1.0, 0.2]"),
    ("data.train.pipelines.0.5.dtype=123", "data.train.pipelines.0.5.dtype: ToDtype (selfsup-data"),
    ("model.backbone=null", "model.backbone: must be a table with a 'type' naming a backbone component, "
                            "got the string 'null'"),
    ("model.neck={}", "model.neck: must be a table with a 'type' naming a neck component, got an empty table"),
    ("model.type=\"builtins:dict\"", "model.type: "),
    ("optimizer_config.grad_clip={max_norm = -1}", "optimizer_config.grad_clip"),
    ("seed=-1", "seed: must be between 0 and 4294967295"),
    ("seed=9223372036854775807", "seed: must be between 0 and 4294967295"),
    ("runner.device=\"tpu\"", "runner.device"),
    ("evaluation.test.type=5", "evaluation.test.type: must be a component name (string), got 5"),
    ("evaluation.test.type=\"NoSuchDataset\"", "evaluation.test.type: unknown datasets type 'NoSuchDataset'"),
    ("evaluation.min_loaded_share=1.5", "evaluation.min_loaded_share: must be between 0 and 1, got 1.5"),
    ("model.backbone._delete_=\"yes\"", None),
])
def test_nonsense_is_one_line_exit_2(capsys, override, expected):
    code, _, err = check(capsys, "--set", override)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    if expected:
        assert expected in err[0], err


def test_seed_flag_is_checked_like_the_key(capsys):
    code, _, err = check(capsys, "--seed", "-1")
    assert code == 2 and err == ["error: --seed: seed: must be between 0 and 4294967295 (2**32 - 1), got -1"], err


def test_hex_literals_parse_as_toml_integers():
    assert parse_override("model.backbone.depth=0x12") == (("model", "backbone", "depth"), 18)


@pytest.mark.parametrize(("override", "key"), [
    ("model.neck.in_channels=64", "model.neck.in_channels"),
    ("model.backbone.in_channels=3", "model.backbone.in_channels"),
    ("data.train.pipelines.0.6.mean=[0.5, 0.5, 0.5]", "data.train.pipeline"),
])
def test_shapes_that_disagree_fail_the_dry_batch_in_one_line(tiny, capsys, override, key):
    code, _, err = check(capsys, *tiny, override)
    assert code == 2 and len(err) == 1, err
    assert f": {key}: a dry forward of one batch (2 samples of data.train) failed: " in err[0] or \
        f": {key}: the batched transforms turn 1-channel images into 3-channel ones" in err[0], err
    code, _, err = check(capsys, *tiny, override, "--no-dry-run")
    assert code == 0, err


def test_a_subset_larger_than_its_source_fails_the_check(tiny, capsys):
    source = tiny[1].split("=", 1)[1]
    code, _, err = check(capsys, *tiny, f"data.train.data_source={{type = \"Subset\", num_samples = 100, "
                                        f"source = {source}}}")
    assert code == 2 and len(err) == 1, err
    assert "num_samples must be an integer from 1 to 6" in err[0]


def test_every_problem_in_one_round(tmp_path, capsys):
    path = tmp_path / "typos.toml"
    path.write_text(SIMCLR.read_text().replace('_base_ = ["', f'_base_ = ["{SIMCLR.parent}/'))
    code = main([str(path), "--check", "--set", "model.neck.hid_channel=4", "runner.max_epoch=2",
                 "data.samples_per_gpu=0"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert any("model.neck.hid_channel: unknown argument" in line for line in err), err
    assert any("runner.max_epoch" in line for line in err), err
    assert any("data.samples_per_gpu" in line for line in err), err
    assert all(line.startswith("error: ") for line in err)


def test_missing_model_is_one_line(tmp_path, capsys):
    path = tmp_path / "nomodel.toml"
    path.write_text("[runner]\nmax_epochs = 1\n[data]\nsamples_per_gpu = 2\n")
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {path}: model: missing [model] table (the algorithm to train), e.g. [model] " \
                     'type = "SimCLR"', err


def test_cr_only_line_endings_are_refused(tmp_path, capsys):
    path = tmp_path / "mac.toml"
    path.write_bytes(b"seed = 1\r[model]\rtype = \"SimCLR\"\r")
    assert main([str(path), "--check"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {path}:1: invalid TOML: a carriage return (CR) without a line feed; TOML lines end in "
                   "LF or CR LF (convert the file, e.g. with dos2unix -c mac)"]
    path.write_bytes(b"seed = 1\r\n")  # CR LF is fine
    assert load_config(path).data == {"seed": 1}


@pytest.mark.parametrize("kind", ["base_chain", "dotted_key", "inline_tables", "arrays", "override_key",
                                  "nested_components"])
def test_deep_nesting_is_one_line(tmp_path, capsys, kind):
    path, args = tmp_path / "deep.toml", []
    if kind == "base_chain":
        for i in range(300):
            (tmp_path / f"b{i}.toml").write_text(f'_base_ = "b{i + 1}.toml"\n' if i < 299 else "seed = 1\n")
        path = tmp_path / "b0.toml"
    elif kind == "dotted_key":
        path.write_text(".".join(["a"] * 2000) + " = 1\n")
    elif kind == "inline_tables":
        path.write_text("a = " + "{b = " * 5000 + "1" + "}" * 5000 + "\n")
    elif kind == "arrays":
        path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    elif kind == "override_key":
        path.write_text("seed = 1\n")
        args = ["--set", ".".join(["a"] * 2000) + "=1"]
    else:
        inner = '{type = "ResNet", depth = 18}'
        for _ in range(600):
            inner = '{type = "NonLinearNeck", in_channels = 1, out_channels = 1, extra = ' + inner + "}"
        path.write_text(f"[model]\ntype = \"SimCLR\"\nneck = {inner}\n")
    assert main([str(path), "--check", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "RecursionError" not in err[0], err


def test_odc_min_cluster_larger_than_every_cluster_is_one_line(tmp_path, capsys, monkeypatch):
    import torch

    from selfsup_core.errors import SelfSupError
    from selfsup_models.memories.odc import ODCMemory

    memory = ODCMemory(length=8, feat_dim=4, momentum=0.5, num_classes=2, min_cluster=100)
    memory.init_memory(torch.randn(8, 4).numpy(), (torch.arange(8) % 2).numpy())
    with pytest.raises(SelfSupError) as info:
        memory.deal_with_small_clusters()
    assert isinstance(info.value, ValueError)  # what callers caught before
    assert str(info.value) == ("ODCMemory: every cluster has fewer than min_cluster=100 samples; lower min_cluster "
                               "or num_classes")


@pytest.mark.parametrize("command", [[], ["eval"]])
def test_an_unknown_device_flag_is_one_line(capsys, command):
    assert main([*command, str(SIMCLR), "--device", "tpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --device: must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'"]
