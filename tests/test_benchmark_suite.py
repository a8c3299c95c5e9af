"""benchmarks/run.py and the README results tables it generates (``readme_tables.py``)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from selfsup_core.config import load_config

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


def _module(name: str) -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


tables = _module("readme_tables")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN), *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_readme_tables_are_generated_from_the_results_files() -> None:
    proc = run("table", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "README.md results tables are up to date"


@pytest.mark.parametrize("name", sorted(tables.load_suite()["accuracy"]))
def test_every_accuracy_entry_names_a_config_that_loads_with_its_options(name: str) -> None:
    entry = tables.load_suite()["accuracy"][name]
    config = load_config(REPO / entry["config"], entry["cfg_options"])
    assert config.data["evaluation"]["evaluators"][0]["type"] == "KNN"
    assert entry["epochs"] >= 1 and entry["bank_samples"] >= entry["test_samples"] > 0


def test_every_shipped_fashion_mnist_pretraining_config_is_in_the_accuracy_suite() -> None:
    suite = {Path(e["config"]).name for e in tables.load_suite()["accuracy"].values()}
    shipped = {p.name for p in (REPO / "examples" / "configs").glob("*_fashion-mnist.toml")
               if not p.name.startswith("extractor_")}
    assert shipped - suite == set()


def test_speed_entries_name_scripts_that_exist() -> None:
    for entry in tables.load_suite()["speed"].values():
        assert (REPO / entry["script"]).is_file(), entry["script"]


def test_dry_run_prints_the_pretraining_command_of_an_entry() -> None:
    proc = run("accuracy", "simclr-quickstart", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "== accuracy.simclr-quickstart: python benchmarks/fashion_mnist_pretrain.py "
        "examples/configs/simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml --epochs 3 --train-samples 60000 "
        "--bank-samples 60000 --test-samples 10000 --name simclr-quickstart --raw-pixels reference --linear --note "
        "'The quick-start config as shipped (ResNet-18 width 16, batch 128, 3 epochs, LARS lr 4.0, T 0.2, 200 "
        "warm-up iterations, per-iteration cosine, precision fastest = bf16 on this CPU with native "
        "AVX512-BF16).'"]


def test_gpu_schedule_drops_the_cpu_overrides_and_sets_the_epochs() -> None:
    proc = run("accuracy", "mae", "--gpu", "--epochs", "50", "--no-linear", "--device", "cuda", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert "--epochs 50 --train-samples 60000 --bank-samples 60000 --test-samples 10000 --name mae " in line
    assert f"--results {REPO / 'benchmarks' / 'results' / 'gpu'} --device cuda --raw-pixels reference --finetune" in line
    assert "--cfg-options" not in line and "--linear" not in line


def test_gpu_schedule_takes_each_entrys_epochs_and_gpu_options() -> None:
    proc = run("accuracy", "mocov1", "relative-loc", "simclr-quickstart", "--gpu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2  # the quick start (gpu_epochs = 0) is a CPU schedule only
    assert lines[0].startswith("== accuracy.mocov1: ") and " --epochs 100 " in lines[0]
    assert lines[0].endswith("--raw-pixels reference --linear --cfg-options 'lr_config.step=[60,80]'")
    assert lines[1].startswith("== accuracy.relative-loc: ") and " --epochs 70 " in lines[1]


def _milestones(config) -> list[int]:
    lr = config.data.get("lr_config", {})
    step = lr.get("step", []) if str(lr.get("policy", "")).lower() == "step" else []
    return [step] if isinstance(step, int) else list(step)


@pytest.mark.parametrize("name", sorted(tables.load_suite()["accuracy"]))
def test_every_gpu_schedule_loads_and_its_lr_steps_fall_inside_it(name: str) -> None:
    entry = tables.load_suite()["accuracy"][name]
    epochs = entry["gpu_epochs"]
    assert isinstance(epochs, int) and epochs >= 0
    if not epochs:
        return
    shipped = load_config(REPO / entry["config"])
    config = load_config(REPO / entry["config"], [*entry.get("gpu_cfg_options", []), f"runner.max_epochs={epochs}"])
    # every lr step the shipped schedule takes, the shorter GPU schedule takes too (a milestone
    # left at or past its last epoch would silently never fire; DeepCluster's [400] of 200 is
    # a constant lr on purpose)
    shipped_epochs = shipped.data["runner"]["max_epochs"]
    taken = [m for m in _milestones(shipped) if m < shipped_epochs]
    assert len([m for m in _milestones(config) if m < epochs]) == len(taken), (name, _milestones(config))
    if entry.get("gpu_finetune"):
        types = [e["type"] for e in config.data["evaluation"]["evaluators"]]
        assert "FineTune" in types, f"{name}: gpu_finetune needs a FineTune evaluator in its config"


def test_gpu_results_come_from_a_cuda_device_only(tmp_path: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        proc = run("accuracy", "simclr", "--gpu")
        assert proc.returncode == 2
        assert proc.stderr.strip() == ("run.py accuracy --gpu: no CUDA device here: benchmarks/results/gpu holds GPU "
                                       "runs only; check the commands on a CPU with --smoke --results DIR")
    proc = run("accuracy", "simclr", "--gpu", "--smoke")
    assert proc.returncode == 2
    assert "--smoke needs --results DIR" in proc.stderr
    proc = run("accuracy", "simclr", "--missing")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("run.py accuracy --gpu: --epochs, --missing, --results and --smoke go with: "
                                   "accuracy --gpu")


def test_missing_runs_only_the_entries_without_a_gpu_result(tmp_path: Path) -> None:
    (tmp_path / "fashion_mnist_byol.json").write_text("{}")
    proc = run("accuracy", "byol", "simsiam", "--gpu", "--missing", "--results", str(tmp_path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == ["== accuracy.simsiam"]
    (tmp_path / "fashion_mnist_simsiam.json").write_text("{}")
    proc = run("accuracy", "byol", "simsiam", "--gpu", "--missing", "--results", str(tmp_path), "--dry-run")
    assert proc.stdout.strip() == f"no GPU accuracy entry left to run (results in {tmp_path.resolve()})"


def test_smoke_schedule_is_the_same_commands_on_a_few_images(tmp_path: Path) -> None:
    proc = run("accuracy", "npid", "mae", "--gpu", "--smoke", "--results", str(tmp_path), "--device", "cpu", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    npid, mae = proc.stdout.strip().splitlines()
    assert " --epochs 1 --train-samples 256 --bank-samples 256 --test-samples 128 " in npid
    assert npid.endswith("--cfg-options 'lr_config.step=[60,80]' model.memory_bank.length=256")
    assert "--raw-pixels" not in npid
    assert mae.endswith("--linear --finetune --finetune-epochs 1")


def test_an_unknown_entry_is_one_line_naming_the_suite_file() -> None:
    proc = run("accuracy", "simclrr", "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("benchmarks/suite.toml: no [accuracy.simclrr] entry; entries: ")


def _record(**changes) -> dict:
    record = {
        "config": "examples/configs/byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml",
        "command": "python benchmarks/fashion_mnist_pretrain.py X --cfg-options data.samples_per_gpu=64",
        "run": "selfsup 0.1.0: BYOL on cuda, precision bfloat16, 60000 samples",
        "epochs": 7, "train_samples": 60000, "knn_bank_samples": 60000, "knn_test_samples": 10000,
        "knn_top1": 0.85125, "linear_top1": 0.8612, "raw_pixel_knn_top1": 0.8178, "train_seconds": 90.0,
        "machine": {"cpus": 16, "cuda": "NVIDIA H100"},
    }
    return {**record, **changes}


BYOL_CONFIG = ("[byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml]"
               "(examples/configs/byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml)")


def test_accuracy_row_reads_every_figure_from_its_record(tmp_path: Path) -> None:
    (tmp_path / "fashion_mnist_byol.json").write_text(json.dumps(_record()))
    suite = {"accuracy": {"byol": {"label": "BYOL", "gpu_epochs": 100}, "missing": {"label": "absent"}}}
    rows, notes = tables.accuracy_rows(suite, tmp_path)
    assert rows == [["BYOL", BYOL_CONFIG, "7", "64", "0.8512", "0.8612", "1.5", "NVIDIA H100, bf16",
                     "100", "—", "—", "—", "—", "not run yet"]]
    assert notes[0].endswith("`python benchmarks/fashion_mnist_pretrain.py X --cfg-options data.samples_per_gpu=64`")


def test_gpu_column_group_reads_the_gpu_record_and_names_its_device(tmp_path: Path) -> None:
    (tmp_path / "gpu").mkdir()
    gpu = _record(epochs=100, batch=256, knn_top1=0.87, linear_top1=0.891, train_seconds=300.0, finetune_top1=0.9312,
                  scratch_top1=0.9104, machine={"cpus": 16, "cuda": "NVIDIA H200"}, command="python G")
    (tmp_path / "gpu" / "fashion_mnist_byol.json").write_text(json.dumps(gpu))
    suite = {"accuracy": {"byol": {"label": "BYOL", "gpu_epochs": 100}}}
    rows, notes = tables.accuracy_rows(suite, tmp_path)
    assert rows == [["BYOL", BYOL_CONFIG, "—", "—", "—", "—", "—", "not run",
                     "100", "0.8700", "0.8910", "0.9312 (0.9104)", "5.0", "NVIDIA H200, bf16"]]
    assert notes == ["- BYOL (GPU): [`" + str(tmp_path / "gpu" / "fashion_mnist_byol.json") + "`](" +
                     str(tmp_path / "gpu" / "fashion_mnist_byol.json") + "); `python G`"]
    (tmp_path / "gpu" / "fashion_mnist_byol.json").write_text(json.dumps({**gpu, "machine": {"cpus": 2, "cuda": None}}))
    with pytest.raises(SystemExit, match="not a GPU run"):
        tables.accuracy_rows(suite, tmp_path)


def test_replace_blocks_rewrites_only_between_the_markers() -> None:
    text = "a\n<!-- results:speed -->\nold\n<!-- /results:speed -->\nb\n"
    assert tables.replace_blocks(text, {"speed": "new"}) == "a\n<!-- results:speed -->\nnew\n<!-- /results:speed -->\nb\n"
    with pytest.raises(SystemExit, match="the markers <!-- results:accuracy --> and"):
        tables.replace_blocks(text, {"accuracy": "x"})


def _write_fashion_mnist_like(root: Path, n_train: int, n_test: int) -> None:
    """Gzipped IDX files shaped like Fashion-MNIST's (28x28 uint8, labels 0-9), class-dependent
    so that a classifier has something to learn."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 64, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose row is the class
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
        for name, array in ((f"{prefix}-images-idx3-ubyte.gz", images), (f"{prefix}-labels-idx1-ubyte.gz", labels)):
            header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(root / name, "wb") as fh:
                fh.write(header + array.tobytes())


def test_finetune_scores_the_checkpoint_and_the_same_network_from_scratch(tmp_path: Path) -> None:
    _write_fashion_mnist_like(tmp_path / "fm", 256, 40)
    config = "examples/configs/mae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml"
    proc = subprocess.run(
        [sys.executable, "benchmarks/fashion_mnist_pretrain.py", config, "--epochs", "1", "--train-samples", "96",
         "--bank-samples", "256", "--test-samples", "40", "--device", "cpu", "--finetune", "--finetune-epochs", "2",
         "--data-root", str(tmp_path / "fm"), "--results", str(tmp_path / "out"), "--name", "mae-tiny",
         "--cfg-options", "model.backbone.arch={embed_dims=32,num_layers=2,num_heads=2,feedforward_channels=64}",
         "model.neck.embed_dim=32", "model.neck.decoder_embed_dim=32", "model.neck.decoder_depth=1",
         "data.workers_per_gpu=0", "data.samples_per_gpu=32", "evaluation.workers_per_gpu=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "fashion_mnist_mae-tiny.json").read_text())
    assert record["finetune_epochs"] == 2
    assert record["finetune_recipe"] == {"type": "FineTune", "lr": 1e-3, "weight_decay": 0.05, "layer_decay_rate": 0.75,
                                         "epochs": 2, "warmup_epochs": 1, "batch_size": 256, "label_smoothing": 0.1}
    assert record["scratch_recipe"].startswith("the same FineTune table with layer_decay_rate = 1.0")
    for key in ("finetune_top1", "finetune_top5", "scratch_top1", "scratch_top5"):
        assert 0.0 <= record[key] <= 1.0 and round(record[key] * 40) == record[key] * 40, key  # k of 40 images
    assert " --finetune --finetune-epochs 2 --data-root " in record["command"]
    assert proc.stdout.strip().splitlines()[-2].startswith("MAE: fine-tuned top-1 ")


def test_finetune_of_a_config_without_a_finetune_evaluator_is_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/fashion_mnist_pretrain.py",
         "examples/configs/simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml", "--finetune"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().endswith("simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml: --finetune needs a "
                                        "FineTune table in [[evaluation.evaluators]] (see "
                                        "mae_vit-mini-p4_1xb256-coslr-100e_fashion-mnist.toml)")
