"""benchmarks/gpu_suite.py on the CPU (--smoke) and the README's GPU table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_suite
        import readme_tables

        yield gpu_suite, readme_tables
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def test_smoke_run_on_the_cpu_writes_every_field(bench, tmp_path):
    gpu_suite, _ = bench
    out = tmp_path / "gpu.json"
    assert gpu_suite.main(["--device", "cpu", "--smoke", "--items", "a,d", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["device"] == "cpu" and record["smoke"] is True and record["matmul_peak_flops"] > 0
    a = record["items"]["a_fashion_mnist_simclr_r18"]
    assert {"selfsup", "plain", "ratio", "device", "torch", "selfsup_s_per_epoch", "sync_check"} <= set(a)
    assert a["ratio"] == pytest.approx(a["selfsup"] / a["plain"], abs=1e-3)
    assert a["data_path"].startswith("resident on cpu") and a["sync_check"] == "not run (no CUDA)"
    d = record["items"]["d_fashion_mnist_pretrain"]
    assert {"train_seconds", "knn_top1", "linear_top1", "device", "torch"} <= set(d) and 0 <= d["knn_top1"] <= 1
    with pytest.raises(SystemExit):  # a CPU run never writes benchmarks/results/gpu.json
        gpu_suite.main(["--device", "cpu", "--smoke"])


def test_the_gpu_table_renders_gpu_json_or_says_it_is_not_measured(bench, tmp_path):
    _, readme_tables = bench
    assert readme_tables.gpu_block(tmp_path) == "not measured yet: needs a GPU (`python benchmarks/run.py gpu`)"
    record = {"device": "NVIDIA H100", "torch": "2.14.1", "smoke": False, "items": {
        "a_fashion_mnist_simclr_r18": {"selfsup": 30000.0, "plain": 27200.0, "plain_compiled": 31000.0, "ratio": 1.103,
                                       "sync_check": "passed: no host synchronisation inside the steps"},
        "c_mae_vit_b16_224": {"selfsup": 2500.0, "plain": None, "ratio": None, "mfu": 0.41},
        "d_fashion_mnist_pretrain": {"train_seconds": 230.4, "knn_top1": 0.8812, "linear_top1": 0.9001}}}
    (tmp_path / "gpu.json").write_text(json.dumps(record))
    lines = readme_tables.gpu_block(tmp_path).splitlines()
    assert lines[2] == "| (a) SimCLR ResNet-18 Fashion-MNIST | 30000 | 27200 (compiled 31000) | 1.10 | sync check passed |"
    assert lines[3] == "| (c) MAE ViT-B/16 224 px | 2500 | — | — | MFU 41% |"
    assert lines[4] == "| (d) SimCLR ResNet-18 Fashion-MNIST, full pre-training | 230 s training |  |  | kNN 0.8812, linear 0.9001 |"
    assert lines[-1].startswith("NVIDIA H100, torch 2.14.1:")
