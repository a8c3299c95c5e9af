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
    assert "--epochs 50 --train-samples 60000 --bank-samples 60000 --test-samples 10000 " in line
    assert "--device cuda --raw-pixels reference" in line
    assert "--cfg-options" not in line and "--linear" not in line


def test_an_unknown_entry_is_one_line_naming_the_suite_file() -> None:
    proc = run("accuracy", "simclrr", "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("benchmarks/suite.toml: no [accuracy.simclrr] entry; entries: ")


def test_accuracy_row_reads_every_figure_from_its_record(tmp_path: Path) -> None:
    record = {
        "config": "examples/configs/byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml",
        "command": "python benchmarks/fashion_mnist_pretrain.py X --cfg-options data.samples_per_gpu=64",
        "run": "selfsup 0.1.0: BYOL on cuda, precision bfloat16, 60000 samples",
        "epochs": 7, "train_samples": 60000, "knn_bank_samples": 60000, "knn_test_samples": 10000,
        "knn_top1": 0.85125, "linear_top1": 0.8612, "raw_pixel_knn_top1": 0.8178, "train_seconds": 90.0,
        "machine": {"cpus": 16, "cuda": "NVIDIA H100"},
    }
    (tmp_path / "fashion_mnist_byol.json").write_text(json.dumps(record))
    suite = {"accuracy": {"byol": {"label": "BYOL"}, "missing": {"label": "absent"}}}
    rows, notes = tables.accuracy_rows(suite, tmp_path)
    assert rows == [["BYOL", "[byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml]"
                     "(examples/configs/byol_resnet18_1xb256-coslr-200e_fashion-mnist.toml)",
                     "7", "64", "0.8512", "0.8612", "1.5", "NVIDIA H100, bf16"]]
    assert notes[0].endswith("`python benchmarks/fashion_mnist_pretrain.py X --cfg-options data.samples_per_gpu=64`")


def test_replace_blocks_rewrites_only_between_the_markers() -> None:
    text = "a\n<!-- results:speed -->\nold\n<!-- /results:speed -->\nb\n"
    assert tables.replace_blocks(text, {"speed": "new"}) == "a\n<!-- results:speed -->\nnew\n<!-- /results:speed -->\nb\n"
    with pytest.raises(SystemExit, match="the markers <!-- results:accuracy --> and"):
        tables.replace_blocks(text, {"accuracy": "x"})
