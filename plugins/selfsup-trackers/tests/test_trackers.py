"""WandbLogger and MLflowLogger: records forwarded as ``<mode>/<key>`` at step ``iter``, runs
ended as finished or failed, the library imported only when configured, a missing library one
config error. Stand-in modules cover the hooks everywhere; the real libraries run in their
offline modes where they are installed."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from selfsup_core.cli import main
from selfsup_data.testing import write_tiny_simclr_config
from selfsup_trackers.loggers import default_tracking_uri

pytest.importorskip("selfsup_contrastive")



def _config(tmp_path: Path, hooks: str) -> Path:
    np.savez(tmp_path / "tiny.npz", images=np.random.default_rng(0).integers(0, 255, (16, 8, 8), dtype=np.uint8))
    return write_tiny_simclr_config(tmp_path / "tiny.toml", tmp_path / "tiny.npz", flip=False, extra=hooks)


class _FakeWandbRun:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def log(self, values: dict[str, float], step: int) -> None:
        self.calls.append(("log", values, step))

    def finish(self, exit_code: int = 0) -> None:
        self.calls.append(("finish", exit_code))


def _fake_modules(calls: list[Any]) -> dict[str, types.ModuleType]:
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kw: calls.append(("wandb.init", kw)) or _FakeWandbRun(calls)  # type: ignore[attr-defined]
    mlflow = types.ModuleType("mlflow")
    mlflow.set_tracking_uri = lambda uri: calls.append(("mlflow.uri", uri))  # type: ignore[attr-defined]
    mlflow.set_experiment = lambda name: calls.append(("mlflow.experiment", name))  # type: ignore[attr-defined]
    mlflow.start_run = lambda **kw: calls.append(("mlflow.start", kw))  # type: ignore[attr-defined]
    mlflow.log_params = lambda params: calls.append(("mlflow.params", params))  # type: ignore[attr-defined]
    mlflow.log_metrics = lambda values, step: calls.append(("mlflow.metrics", values, step))  # type: ignore[attr-defined]
    mlflow.end_run = lambda status: calls.append(("mlflow.end", status))  # type: ignore[attr-defined]
    return {"wandb": wandb, "mlflow": mlflow}


def test_records_reach_both_trackers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[Any] = []
    for name, module in _fake_modules(calls).items():
        monkeypatch.setitem(sys.modules, name, module)
    config = _config(tmp_path, '\n[[hooks]]\ntype = "WandbLogger"\nproject = "p"\nmode = "offline"\n'
                               '[[hooks]]\ntype = "MLflowLogger"\nexperiment = "e"\n')
    assert main(["train", str(config), "--work-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0
    capsys.readouterr()
    init = next(c[1] for c in calls if c[0] == "wandb.init")
    assert init["project"] == "p" and init["mode"] == "offline" and init["name"] == "run"
    assert init["config"]["model.backbone.depth"] == 18 and init["dir"] == str(tmp_path / "run")
    logged = [(c[2], c[1]) for c in calls if c[0] == "log"]
    steps = [step for step, values in logged if "train/loss" in values]
    assert steps == [1, 2]
    assert {"train/loss", "train/lr", "train/images_per_s"} <= set(logged[0][1]) and "train/iter" not in logged[0][1]
    assert any("train_epoch/loss" in values for _, values in logged)
    mlflow_metrics = [(c[2], c[1]) for c in calls if c[0] == "mlflow.metrics"]
    assert mlflow_metrics == logged  # the same records, in the same order
    assert ("mlflow.uri", default_tracking_uri(tmp_path / "run")) in calls
    assert ("mlflow.experiment", "e") in calls and calls[-2:] == [("finish", 0), ("mlflow.end", "FINISHED")]
    params = next(c[1] for c in calls if c[0] == "mlflow.params")
    assert params["model.type"] == "SimCLR"


def test_a_missing_library_is_one_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = _config(tmp_path, '\n[[hooks]]\ntype = "WandbLogger"\n')
    assert main(["train", str(config), "--check"]) == 2
    err = capsys.readouterr().err
    assert "hooks.0" in err and "WandbLogger: needs the wandb package: pip install wandb" in err
    assert len(err.strip().splitlines()) == 1


def test_nothing_is_imported_unless_configured() -> None:
    import selfsup_trackers.loggers  # noqa: F401

    before = {m for m in ("wandb", "mlflow") if m in sys.modules}
    assert main(["list", "hooks"]) == 0
    assert {m for m in ("wandb", "mlflow") if m in sys.modules} == before
    if not before:
        assert "wandb" not in sys.modules and "mlflow" not in sys.modules


def test_wandb_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("wandb")
    config = _config(tmp_path, '\n[[hooks]]\ntype = "WandbLogger"\nproject = "selfsup-test"\nmode = "offline"\n')
    assert main(["train", str(config), "--work-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))


def test_mlflow_file_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mlflow = pytest.importorskip("mlflow")
    config = _config(tmp_path, '\n[[hooks]]\ntype = "MLflowLogger"\nexperiment = "selfsup-test"\n')
    assert main(["train", str(config), "--work-dir", str(tmp_path / "run"), "--device", "cpu"]) == 0
    mlflow.set_tracking_uri(default_tracking_uri(tmp_path / "run"))
    client = mlflow.MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("selfsup-test").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["model.type"] == "SimCLR"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2]
