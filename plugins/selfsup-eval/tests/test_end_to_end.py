"""Through ``selfsup-run``: online kNN during training, then ``eval`` (kNN + linear probe)
and ``tsne`` on the checkpoint, with real selfsup-data components on a small .npz set."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("selfsup_data")

HERE = Path(__file__).resolve().parent
PIPELINE = '[{ type = "ToImage" }, { type = "ToDtype", dtype = "float32", scale = true }]'


def _write_bands(path: Path, count: int, seed: int) -> None:
    """3 classes of 16x16 grey images plus noise: horizontal stripes, vertical stripes, flat
    grey (classes a conv layer tells apart after global pooling)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 40, size=(count, 16, 16)).astype(np.uint8)
    for i, label in enumerate(labels):
        if label == 0:
            images[i, ::2] += 160
        elif label == 1:
            images[i, :, ::2] += 160
        else:
            images[i] += 80
    np.savez(path, images=images, labels=labels)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    _write_bands(root / "train.npz", 90, 0)
    _write_bands(root / "test.npz", 30, 1)
    config = root / "tiny.toml"
    config.write_text(f"""
[model]
type = "eval_toy:TinyAlgo"

[data]
samples_per_gpu = 16
workers_per_gpu = 0
[data.train]
type = "OneViewDataset"
pipeline = {PIPELINE}
data_source = {{ type = "NumpyArrays", file = "{root / 'train.npz'}" }}

[optimizer]
type = "SGD"
lr = 0.05
momentum = 0.9

[runner]
max_epochs = 2
[log_config]
interval = 2
progress = "lines"

[evaluation]
interval = 1
samples_per_gpu = 32
workers_per_gpu = 0
[evaluation.train]
type = "OneViewDataset"
pipeline = {PIPELINE}
data_source = {{ type = "NumpyArrays", file = "{root / 'train.npz'}" }}
[evaluation.test]
type = "OneViewDataset"
pipeline = {PIPELINE}
data_source = {{ type = "NumpyArrays", file = "{root / 'test.npz'}", classes = ["horizontal", "vertical", "flat"] }}

[[evaluation.evaluators]]
type = "KNN"
k = 10
[[evaluation.evaluators]]
type = "LinearProbe"
epochs = 30
batch_size = 32
""", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
    work = root / "run"
    result = _selfsup([str(config), "--work-dir", str(work)], env, root)
    assert result.returncode == 0, result.stderr
    return {"root": root, "config": config, "work": work, "env": env, "stderr": result.stderr, "stdout": result.stdout}


def _selfsup(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *args, "--allow-import-paths"], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_online_knn_is_logged_every_epoch_with_the_best_value(trained):
    records = [json.loads(line) for line in (trained["work"] / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["mode"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert set(evals[0]) >= {"knn_top1", "knn_top5", "best_knn_top1", "eval_seconds"}
    assert "linear_top1" not in evals[0]  # only the online evaluator (KNN) runs during training
    assert evals[1]["best_knn_top1"] == max(r["knn_top1"] for r in evals)
    assert "evaluation after epoch 2: knn_top1" in trained["stderr"]


def test_the_run_ends_with_its_last_evaluation_and_where_its_files_are(trained):
    work = trained["work"]
    last = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()][-1]
    lines = trained["stdout"].splitlines()
    assert re.fullmatch(rf"done: epoch 2, iteration {last['iter']} in \d\d:\d\d", lines[0]), lines[0]
    assert lines[1] == f"  evaluation after epoch 2: knn_top1 {last['knn_top1']:.4f}, knn_top5 {last['knn_top5']:.4f}"
    assert lines[2] == f"  checkpoint  {work / 'latest.pth'}   (backbone weights: selfsup-run export {work} backbone.pth)"
    assert lines[3] == f"  metrics     {work / 'metrics.jsonl'}"
    if importlib.util.find_spec("matplotlib") is not None:
        assert lines[4] == f"  curves      {work / 'curves.png'}"
        assert (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert lines[4].startswith("  curves      not drawn: matplotlib is not installed")
    assert lines[5:] == [f"  config      {work / 'config.toml'}"]


def test_eval_scores_the_checkpoint_with_knn_and_a_linear_probe(trained):
    out = trained["root"] / "scores.json"
    result = _selfsup(["eval", str(trained["config"]), "--checkpoint", str(trained["work"] / "latest.pth"),
                       "--evaluator", "knn", "linear", "--out", str(out)], trained["env"], trained["root"])
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["epoch"] == 2 and record["device"] == "cpu"
    assert [e["type"] for e in record["evaluators"]] == ["KNN", "LinearProbe"]
    results = record["results"]
    # the bands are separable from the first conv layer's features
    assert results["knn_top1"] >= 0.9 and results["linear_top1"] >= 0.9
    online = [json.loads(line) for line in (trained["work"] / "metrics.jsonl").read_text().splitlines()][-1]
    assert online["mode"] == "eval" and online["knn_top1"] == results["knn_top1"]  # same weights, same score
    assert f"results written to {out}" in result.stdout


def test_tsne_writes_a_png_of_the_test_features(trained):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = trained["root"] / "map.png"
    result = _selfsup(["tsne", str(trained["config"]), "--checkpoint", str(trained["work"] / "latest.pth"),
                       "--out", str(out)], trained["env"], trained["root"])
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"tsne_png {out}" in result.stdout and "tsne_points 30" in result.stdout


def test_an_evaluation_dataset_typo_is_reported_before_training(trained, tmp_path):
    result = _selfsup([str(trained["config"]), "--work-dir", str(tmp_path / "run"),
                       "--set", "evaluation.test.data_source.fiel=x.npz"], trained["env"], trained["root"])
    assert result.returncode == 2
    assert "evaluation.test.data_source.fiel: unknown argument of NumpyArrays" in result.stderr
    assert not (tmp_path / "run" / "latest.pth").exists()


def test_an_evaluator_refusing_its_input_is_one_line_naming_the_config(trained, tmp_path):
    config = tmp_path / "big_batch.toml"
    config.write_text(trained["config"].read_text().replace("batch_size = 32", "batch_size = 500\ncache_features = false"), encoding="utf-8")
    result = _selfsup(["eval", str(config), "--checkpoint", str(trained["work"] / "latest.pth"),
                       "--evaluator", "linear", "--work-dir", str(tmp_path)], trained["env"], trained["root"])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {config}: [[evaluation.evaluators]] LinearProbe: the [evaluation.train] dataset has 90 samples, "
        "fewer than batch_size * world_size = 500; lower batch_size")
