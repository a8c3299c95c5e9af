"""The GPU benchmark: selfsup against a hand-written loop, MFU, and a full pre-training.

    python benchmarks/run.py gpu                       # one GPU, at most ~10 minutes
    python benchmarks/run.py gpu --device cpu --smoke --out /tmp/gpu.json   # CPU check, < 1 minute

Items (each a key of ``items`` in the results file):

- ``a_fashion_mnist_simclr_r18``: the shipped ``simclr_resnet18_1xb256-coslr-200e_fashion-mnist``
  config (device-resident data as the plain loop, ``runner.compile = "auto"``) against ``plain_loop.py`` eager and
  compiled on the same work; samples/s and s/epoch (60,000 images).
- ``b_simclr_r50_224``: ResNet-50 SimCLR at 224 px (``gpu_simclr_throughput.py``, the in1k
  config on synthetic images) against ``plain_loop.py --arch resnet50``; MFU from the plain
  loop's counted FLOPs per sample.
- ``c_mae_vit_b16_224``: MAE ViT-B/16 at 224 px (the in1k config on synthetic images):
  samples/s and MFU (FLOPs of one training step counted by ``torch.utils.flop_counter``).
- ``d_fashion_mnist_pretrain``: the full 200-epoch pre-training with kNN and the linear probe
  (``fashion_mnist_pretrain.py``); ``--smoke``: one tiny epoch with kNN only.

MFU is against the device's measured dense matmul peak (bf16 on CUDA, fp32 on a CPU), not
the datasheet. On CUDA the steady-state selfsup steps of (a) run under
``torch.cuda.set_sync_debug_mode("error")``: ``sync_check`` says whether a step synchronised
the host. Writes ``benchmarks/results/gpu.json`` (``--out``); never commit a CPU result there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = REPO / "examples" / "configs"
FMNIST = CONFIGS / "simclr_resnet18_1xb256-coslr-200e_fashion-mnist.toml"
MAE = CONFIGS / "mae_vit-base-p16_8xb512-coslr-400e_in1k.toml"
#: --smoke: ResNet-18 at width 4 on both sides of (a) and in (d)
SMOKE_WIDTH = {"model.backbone.base_channels": 4, "model.backbone.stem_channels": 4, "model.neck.in_channels": 32,
               "model.neck.hid_channels": 64, "model.neck.out_channels": 16}


def matmul_peak(device: torch.device, smoke: bool) -> float:
    """Measured dense matmul FLOP/s: bf16 8192^3 on CUDA, fp32 on a CPU (smaller when smoke)."""
    n = 8192 if device.type == "cuda" else (256 if smoke else 1024)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    repeats = 20 if device.type == "cuda" else 3
    a @ b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        c = a @ b
    float(c[0, 0])
    return 2 * n**3 * repeats / (time.perf_counter() - start)


class SyncCheck:
    """A trainer hook: the steps after the first ``warmup`` run under
    ``torch.cuda.set_sync_debug_mode("error")`` (CUDA only); a host sync inside them raises."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def selfsup_before_iter(self, runner: Any) -> None:
        if runner.device.type == "cuda" and runner.iter >= self.warmup:
            torch.cuda.set_sync_debug_mode("error")

    def selfsup_after_iter(self, runner: Any, outputs: Any) -> None:
        if runner.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")


def selfsup_run(config: Path, values: dict[str, Any], npz: Path, work: Path, device: str,
                hooks: list[tuple[str, Any]] = (), flops: bool = False) -> dict[str, Any]:
    """Train ``config`` on ``npz`` in this process with ``values``; returns ``samples_per_s``
    (median of the ``train`` records after the first two), the trainer's data path and, with
    ``flops``, the FLOPs per sample of one training step."""
    from selfsup_core.config import load_config
    from selfsup_core.engine.trainer import Trainer
    from selfsup_core.testing import read_metrics
    from selfsup_data.testing import config_on_npz

    derived, options = config_on_npz(config, npz, work.parent / f"{work.name}.toml", values)
    trainer = Trainer(load_config(derived, options), work_dir=work, device=device)
    trainer.hooks.extend(hooks)
    result = trainer.run()
    rates = [float(r["images_per_s"]) for r in read_metrics(work, "train") if "images_per_s" in r]
    steady = rates[2:] or rates
    out = {"samples_per_s": round(statistics.median(steady), 1), "data_path": trainer.data_path,
           "seconds": round(result["seconds"], 2), "eval": result["eval"]}
    if flops:
        out["flops_per_sample"] = step_flops(trainer)
    return out


def step_flops(trainer: Any) -> float:
    """FLOPs per sample of one forward + backward of ``trainer``'s model on one of its batches."""
    from torch.utils.flop_counter import FlopCounterMode

    from selfsup_core.engine.data import batch_size_of, images_to_channels_last, to_device

    batch = to_device(next(iter(trainer.data_loader)), trainer.device)
    if trainer.device_transform is not None:
        with torch.no_grad():
            batch = trainer.device_transform(batch)
    if trainer.channels_last:
        batch = images_to_channels_last(batch)
    autocast = torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype,
                              enabled=trainer.autocast_dtype is not None)
    with FlopCounterMode(display=False) as counter:
        with autocast:
            outputs = trainer.model(mode="train", **trainer._forward_args(batch))
        loss, _ = trainer._parse_outputs(outputs)
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch_size_of(batch)


def plain(args: list[str]) -> dict[str, Any]:
    """Run ``plain_loop.py`` with ``args``; its JSON line."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "plain_loop.py"), *args], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"plain_loop.py {' '.join(args)} failed: {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def synthetic_npz(path: Path, count: int, shape: tuple[int, ...]) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, size=(count, *shape), dtype=np.uint8),
             labels=np.arange(count) % 10, classes=np.array([str(i) for i in range(10)]))
    return path


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def item_a(device: str, smoke: bool, tmp: Path, sync: bool) -> dict[str, Any]:
    from selfsup_data.testing import fashion_mnist_npz

    samples, batch = (32, 8) if smoke else (60000, 256)
    npz, real = fashion_mnist_npz(tmp / "fm.npz", samples)
    values = {"runner.max_epochs": 1 if smoke else 2, "data.samples_per_gpu": batch, "evaluation.interval": 0,
              "log_config.interval": 1 if smoke else 20, "data.resident": True, "checkpoint_config.interval": 100,
              **(SMOKE_WIDTH if smoke else {})}
    hooks = [("sync_check", SyncCheck(warmup=2 if smoke else 40))] if sync else []
    sync_result = "not run (no CUDA)" if not sync else "passed: no host synchronisation inside the steps"
    try:
        selfsup = selfsup_run(FMNIST, values, npz, tmp / "a", device, hooks)
    except RuntimeError as exc:  # a synchronising call under set_sync_debug_mode("error")
        sync_result = f"failed: {str(exc).splitlines()[0]}"
        torch.cuda.set_sync_debug_mode("default") if torch.cuda.is_available() else None
        selfsup = selfsup_run(FMNIST, values, npz, tmp / "a2", device)
    steps = ["--steps", "2", "--warmup", "1", "--synthetic", "32", "--batch", str(batch), "--width", "4"] if smoke else \
        ["--steps", "100", "--warmup", "20", "--batch", str(batch)]
    eager = plain(["--device", device, *steps])
    compiled = None if smoke else plain(["--device", device, "--compile", *steps])
    return {
        "what": "SimCLR ResNet-18 Fashion-MNIST, shipped config vs plain loop (samples/s)",
        "selfsup": selfsup["samples_per_s"], "plain": eager["samples_per_s"],
        "plain_compiled": compiled["samples_per_s"] if compiled else None,
        "ratio": _ratio(selfsup["samples_per_s"], eager["samples_per_s"]),
        "ratio_compiled": _ratio(selfsup["samples_per_s"], compiled["samples_per_s"] if compiled else None),
        "selfsup_s_per_epoch": round(60000 / selfsup["samples_per_s"], 2),
        "plain_s_per_epoch": eager["s_per_epoch"],
        "plain_compiled_s_per_epoch": compiled["s_per_epoch"] if compiled else None,
        "data_path": selfsup["data_path"], "sync_check": sync_result, "real_data": real, "batch": batch,
    }


def item_b(device: str, smoke: bool, tmp: Path, peak: float) -> dict[str, Any]:
    size, batch = (16, 2) if smoke else (224, 256)
    out = tmp / "b.json"
    args = ["--device", device, "--size", str(size), "--batch", str(batch), "--out", str(out),
            "--cfg-options", 'data.resident="auto"']  # the images are in memory, as the plain loop's
    args += ["--iters", "2", "--image-size", "20", "--warmup-records", "0", "--log-interval", "1",
             "--workers", "0"] if smoke else []
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_simclr_throughput.py"), *args],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"gpu_simclr_throughput.py failed: {proc.stderr[-1500:]}")
    record = json.loads(out.read_text())
    selfsup = float(record.get("images_per_s") or record.get("results", {}).get("images_per_s"))
    steps = ["--steps", "1", "--warmup", "0", "--synthetic", "8"] if smoke else ["--steps", "50", "--warmup", "10",
                                                                                 "--synthetic", "1024"]
    reference = plain(["--device", device, "--arch", "resnet50", "--size", str(size), "--batch", str(batch), *steps])
    return {
        "what": f"SimCLR ResNet-50 {size} px, batch {batch} (samples/s)",
        "selfsup": selfsup, "plain": reference["samples_per_s"], "ratio": _ratio(selfsup, reference["samples_per_s"]),
        "mfu": round(selfsup * reference["flops_per_sample"] / peak, 4),
        "plain_mfu": round(reference["samples_per_s"] * reference["flops_per_sample"] / peak, 4),
    }


def item_c(device: str, smoke: bool, tmp: Path, peak: float) -> dict[str, Any]:
    batch = 2 if smoke else 256
    npz = synthetic_npz(tmp / "mae.npz", 4 if smoke else 4096, (32, 32, 3) if smoke else (64, 64, 3))
    values = {"runner.max_epochs": 2 if smoke else 3, "data.samples_per_gpu": batch, "lr_config.warmup_iters": 1,
              "data.workers_per_gpu": 0 if smoke else "auto", "log_config.interval": 1 if smoke else 4,
              "checkpoint_config.interval": 100, "data.resident": "auto"}
    run = selfsup_run(MAE, values, npz, tmp / "c", device, flops=True)
    return {"what": f"MAE ViT-B/16 224 px, batch {batch} (samples/s)", "selfsup": run["samples_per_s"],
            "plain": None, "ratio": None, "mfu": round(run["samples_per_s"] * run["flops_per_sample"] / peak, 4),
            "data_path": run["data_path"]}


def item_d(device: str, smoke: bool, tmp: Path) -> dict[str, Any]:
    if smoke:
        from selfsup_data.testing import fashion_mnist_npz

        npz, _ = fashion_mnist_npz(tmp / "d.npz", 32)
        values = {"runner.max_epochs": 1, "data.samples_per_gpu": 16, "evaluation.interval": 1,
                  "evaluation.samples_per_gpu": 32, "evaluation.workers_per_gpu": 0, "checkpoint_config.interval": 1,
                  "data.workers_per_gpu": 0,
                  **SMOKE_WIDTH}
        run = selfsup_run(FMNIST, values, npz, tmp / "d", device)
        knn = (run["eval"] or {}).get("knn_top1")
        return {"what": "smoke: 1 epoch on 32 images at width 4, kNN only", "train_seconds": run["seconds"],
                "knn_top1": knn, "linear_top1": None, "epochs": 1}
    command = [sys.executable, str(REPO / "benchmarks" / "fashion_mnist_pretrain.py"), str(FMNIST), "--epochs", "200",
               "--train-samples", "60000", "--bank-samples", "60000", "--test-samples", "10000", "--linear",
               "--raw-pixels", "reference", "--device", device, "--name", "gpu-simclr-200e"]
    subprocess.run(command, check=True, cwd=REPO)
    record = json.loads((RESULTS / "fashion_mnist_gpu-simclr-200e.json").read_text())
    return {"what": "SimCLR ResNet-18 Fashion-MNIST, 200 epochs, shipped config", "epochs": 200,
            "train_seconds": record.get("train_seconds") or record.get("seconds"),
            "knn_top1": record.get("knn_top1"), "linear_top1": record.get("linear_top1")}


ITEMS = ("a", "b", "c", "d")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every item runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    parser.add_argument("--items", default=",".join(ITEMS), help="a subset, e.g. a,c")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU suite needs one (--device cpu --smoke checks that it runs)")
        return 0
    if device.type == "cpu" and args.out.resolve() == (RESULTS / "gpu.json").resolve():
        parser.error("a CPU run must not write benchmarks/results/gpu.json; pass --out FILE")
    if device.type == "cpu":
        torch.set_num_threads(1)
    peak = matmul_peak(device, args.smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "smoke": args.smoke,
                               "matmul_peak_flops": round(peak), "items": {}}
    wanted = args.items.split(",")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = {"a": lambda: item_a(args.device, args.smoke, tmp, device.type == "cuda"),
                "b": lambda: item_b(args.device, args.smoke, tmp, peak),
                "c": lambda: item_c(args.device, args.smoke, tmp, peak),
                "d": lambda: item_d(args.device, args.smoke, tmp)}
        keys = {"a": "a_fashion_mnist_simclr_r18", "b": "b_simclr_r50_224", "c": "c_mae_vit_b16_224",
                "d": "d_fashion_mnist_pretrain"}
        for item in ITEMS:
            if item not in wanted:
                continue
            start = time.perf_counter()
            try:
                record = runs[item]()
            except Exception as exc:  # one item failing must not lose the others
                record = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            record.update(device=name, torch=torch.__version__, wall_s=round(time.perf_counter() - start, 1))
            results["items"][keys[item]] = record
            print(f"{keys[item]}: {json.dumps(record)}", flush=True)
    from selfsup_core.fileio import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in results["items"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
