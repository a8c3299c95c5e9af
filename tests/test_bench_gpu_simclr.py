"""benchmarks/gpu_simclr_throughput.py in its smallest CPU form, as a real subprocess (a ResNet-50
SimCLR run through selfsup-run on 3 iterations of 4 synthetic 32 px images: ~6 s on 2 cores).

One OpenMP thread: on a small machine shared with other work, torch's default of one thread per
core spin-waits against the other processes (measured 9 s instead of 0.25 s per iteration)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_simclr_throughput.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_cpu_smoke_run_writes_the_record(tmp_path: Path) -> None:
    out = tmp_path / "gpu_simclr.json"
    proc = bench("--device", "cpu", "--size", "32", "--batch", "4", "--iters", "3", "--image-size", "48",
                 "--warmup-records", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote {out}" in proc.stdout
    record = json.loads(out.read_text())
    for key in ("benchmark", "command", "config", "note", "run", "device", "gpu", "precision", "size", "batch",
                "iters", "images_per_s", "images_per_s_records", "wall_seconds", "machine", "data"):
        assert key in record, key
    assert record["benchmark"] == "gpu_simclr_throughput"
    assert record["device"] == "cpu" and record["gpu"] is None
    assert "not the GPU benchmark" in record["note"]
    assert record["config"] == "examples/configs/simclr_resnet50_8xb32-coslr-200e_in1k.toml"
    assert record["command"].startswith("python benchmarks/gpu_simclr_throughput.py --device cpu")
    assert record["run"].startswith("selfsup ") and "SimCLR on cpu" in record["run"]
    assert (record["size"], record["batch"], record["iters"]) == (32, 4, 3)
    assert record["precision"] == "fp32"  # "auto" on a CPU
    assert record["data"]["augment_on"] == "device" and record["data"]["num_images"] * record["data"]["repeats"] >= 12
    assert len(record["images_per_s_records"]) == 3  # log interval 1: one record per iteration
    assert record["images_per_s"] > 0 and record["views_per_s"] == pytest.approx(2 * record["images_per_s"], abs=0.11)
    assert record["wall_seconds"] > 0
    assert set(record["machine"]) >= {"platform", "cpus", "torch", "cuda"}
    assert not list(tmp_path.glob("*.tmp"))  # written through a .tmp, then renamed


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip line is for machines without CUDA")
def test_without_cuda_it_skips_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "gpu_simclr.json"
    proc = bench("--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines() == [
        "no CUDA device: skipped (run with --device cpu --size 64 --batch 8 --iters 6 for a CPU smoke run)"]
    assert not out.exists()
