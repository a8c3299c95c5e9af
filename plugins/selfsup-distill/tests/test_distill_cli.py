"""DINO and iBOT through the command line: `selfsup-run list`, a real 2-iteration DINO run of
the shipped Fashion-MNIST config (subprocess) and iBOT's config checked in-process."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from selfsup_core.api import cli_main
from selfsup_data.testing import config_on_npz, fashion_mnist_npz, run_config_on_npz

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
DINO_FM = "dino_resnet18_1xb256-mcrop-2-4-coslr-100e_fashion-mnist.toml"
IBOT_FM = "ibot_vit-mini-p4_1xb256-mcrop-2-4-coslr-100e_fashion-mnist.toml"
SMALL_HEAD = {"model.neck.hid_channels": 32, "model.neck.out_channels": 16, "model.head.in_channels": 16,
              "model.head.out_channels": 64, "data.train.num_views": [1, 1, 2]}


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _real = fashion_mnist_npz(tmp_path_factory.mktemp("data") / "fm.npz", 64)
    return path


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_list_shows_dino_and_ibot_with_their_neck_heads_and_hook() -> None:
    code, out, _ = run_cli("list")
    assert code == 0
    for name in ("DINO", "iBOT", "DINONeck", "DINOHead", "iBOTHead", "DINOHook"):
        assert any(line.split()[:2] == [name, "selfsup-distill"] for line in out.splitlines()), name


def test_two_iterations_of_the_dino_fashion_config_through_selfsup_run(npz: Path, tmp_path: Path) -> None:
    # width-8 ResNet-18 (64 channels); the warm-up starts at the full lr so that the student moves
    values = {**SMALL_HEAD, "model.neck.in_channels": 64, "lr_config.warmup_ratio": 1.0}
    losses = run_config_on_npz(CONFIGS / DINO_FM, npz, tmp_path / "work", values)
    assert len(losses) == 2 and all(0 < x < 10 for x in losses), losses
    state = torch.load(tmp_path / "work" / "latest.pth", weights_only=True, map_location="cpu")
    model = state["state_dict"]
    assert model["head.center"].abs().sum() > 0  # the centre moved
    # epoch 0: the last layer is frozen, so the teacher's copy still equals it; the backbone trained
    # (equal up to the EMA's rounding, m * t + (1 - m) * t)
    assert torch.allclose(model["target_last_layer.weight_v"], model["head.last_layer.weight_v"], rtol=0, atol=1e-6)
    assert not torch.allclose(model["target_backbone.conv1.weight"], model["backbone.conv1.weight"], rtol=0, atol=1e-5)


def test_ibot_fashion_config_runs_a_batch_in_check_mode(npz: Path, tmp_path: Path) -> None:
    values = {**SMALL_HEAD, "model.neck.in_channels": 32, "data.workers_per_gpu": 0,
              "model.backbone.arch": {"embed_dims": 32, "num_layers": 2, "num_heads": 2, "feedforward_channels": 64}}
    config, _ = config_on_npz(CONFIGS / IBOT_FM, npz, tmp_path / "ibot.toml", values)
    code, out, err = run_cli(str(config), "--check")
    assert code == 0, err
    assert "OK, model iBOT" in out + err
