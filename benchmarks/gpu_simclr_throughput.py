"""GPU images/s for ResNet-50 SimCLR at 224 px: the shipped ImageNet recipe through ``selfsup-run``.

Runs ``selfsup-run`` (a real subprocess, this Python's ``bin`` directory) on a config derived
from ``examples/configs/simclr_resnet50_8xb32-coslr-200e_in1k.toml`` (``--config``) with

- the ImageNet ``ImageFolder`` source replaced by ``--num-images`` synthetic uint8 RGB images
  of ``--image-size`` px held in memory (``NumpyArrays`` on an ``.npz`` in a temporary
  directory), repeated (``RepeatDataset``) so that one epoch is ``--iters`` iterations;
- the config's own two-view pipeline, its ``RandomResizedCrop`` set to ``--size`` px and
  ``augment_on = "device"``: DataLoader workers crop and flip to uint8, colour jitter,
  grey-scale, blur and normalisation run batched on the device;
- ``--batch`` images per iteration on one device (SyncBN becomes BatchNorm there), precision
  and channels_last "auto" (bf16 and channels_last on a GPU), no online evaluation, a log
  record every ``--log-interval`` iterations, no curves plotted;
- ``--cfg-options`` passed on last (they win).

Images/s is the ``images_per_s`` of the run's ``train`` records in ``metrics.jsonl``
(samples per second, each sample two views through the network; the trainer synchronises the
device at every record), without the first ``--warmup-records`` records (cuDNN autotuning, the
caching allocator, worker start-up): the median of the rest. Prints the figures and writes
``benchmarks/results/gpu_simclr_throughput_<device type>.json`` (``--out``) atomically.
Not measured: JPEG decoding and file reading (the images are in memory).

    python benchmarks/gpu_simclr_throughput.py                     # GPU: batch 256, 224 px, 100 iterations
    python benchmarks/gpu_simclr_throughput.py --device cpu --size 64 --batch 8 --iters 6   # CPU smoke run

Without CUDA (and without ``--device cpu``) it prints one line and exits 0, writing nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _subprocess import exit_on_sigterm, precision_of, run
from selfsup_core.fileio import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIG = REPO / "examples" / "configs" / "simclr_resnet50_8xb32-coslr-200e_in1k.toml"
SKIP_LINE = "no CUDA device: skipped (run with --device cpu --size 64 --batch 8 --iters 6 for a CPU smoke run)"
POOL_CAP = 2048  # default ceiling of distinct synthetic images (400 MB at 256 px); they are repeated
CPU_NOTE = "CPU smoke run: these figures check that the benchmark works, they are not the GPU benchmark"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None,
                        help="cuda, cuda:N or cpu (default: cuda; without CUDA the benchmark is skipped)")
    parser.add_argument("--batch", type=int, default=None, help="images per iteration (default: 256 on CUDA, 8 on CPU)")
    parser.add_argument("--size", type=int, default=224, help="crop size of the RandomResizedCrop (px)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic source images (px)")
    parser.add_argument("--iters", type=int, default=None, help="iterations (default: 100 on CUDA, 6 on CPU)")
    parser.add_argument("--num-images", type=int, default=None,
                        help=f"distinct synthetic images (default: enough for the run, at most about {POOL_CAP}; "
                             "repeated to fill it)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader workers (default: CPU cores - 2, at most 12, on CUDA; 0 on CPU)")
    parser.add_argument("--log-interval", type=int, default=None,
                        help="iterations per images/s record (default: iters / 10, 1 to 10)")
    parser.add_argument("--warmup-records", type=int, default=2, help="first records left out of the median")
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", dest="channels_last", default="auto", choices=["auto", "true", "false"])
    parser.add_argument("--config", type=Path, default=CONFIG, help="the SimCLR config (default: the in1k ResNet-50)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: benchmarks/results/gpu_simclr_throughput_<device type>.json)")
    parser.add_argument("--cfg-options", "--set", nargs="+", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    for name in ("batch", "size", "image_size", "iters", "num_images", "log_interval"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    return args


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def fill_defaults(args: argparse.Namespace, on_cuda: bool) -> None:
    """The device-dependent defaults: a GPU-sized run on CUDA, a smoke-sized one on the CPU."""
    if args.batch is None:
        args.batch = 256 if on_cuda else 8
    if args.iters is None:
        args.iters = 100 if on_cuda else 6
    if args.workers is None:
        args.workers = max(1, min((os.cpu_count() or 4) - 2, 12)) if on_cuda else 0
    if args.log_interval is None:
        args.log_interval = min(max(args.iters // 10, 1), 10)


def pool_size(batch: int, iters: int, requested: int | None) -> int:
    """Distinct images: ``requested``, else ``batch * k`` with ``k`` the largest divisor of
    ``iters`` that keeps the pool within :data:`POOL_CAP` (so that repeating it gives exactly
    ``iters`` iterations)."""
    if requested is not None:
        return requested
    most = max(POOL_CAP // batch, 1)
    k = max(d for d in range(1, min(iters, most) + 1) if iters % d == 0)
    return batch * k


def write_images(path: Path, count: int, side: int) -> Path:
    """``count`` random uint8 RGB images ``(side, side, 3)`` as ``images`` in an ``.npz``."""
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, size=(count, side, side, 3), dtype=np.uint8)
    np.savez(path, images=images)
    return path


def with_crop_size(pipelines: list[list[dict[str, Any]]], size: int) -> list[list[dict[str, Any]]]:
    """The pipelines with every ``RandomResizedCrop``'s ``size`` set to ``size``."""
    found = False
    out = []
    for pipeline in pipelines:
        group = []
        for transform in pipeline:
            if isinstance(transform, dict) and transform.get("type") == "RandomResizedCrop":
                transform = {**transform, "size": size}
                found = True
            group.append(transform)
        out.append(group)
    if not found:
        raise SystemExit("the config's pipelines have no RandomResizedCrop: --size cannot be applied")
    return out


def train_table(config: Any, images: Path, size: int, times: int) -> dict[str, Any]:
    """``[data.train]`` for the run: the config's dataset on the synthetic images, cropped to
    ``size`` px, augmented on the device, repeated ``times`` times."""
    dataset = dict(config.data.get("data", {}).get("train") or {})
    if dataset.get("type") != "MultiViewDataset" or "pipelines" not in dataset:
        raise SystemExit(f"{config.filename}: [data.train] is not a MultiViewDataset with pipelines "
                         f"(got {dataset.get('type')!r}); the benchmark needs a SimCLR-style config")
    dataset["data_source"] = {"type": "NumpyArrays", "file": str(images)}  # no labels array: unlabelled
    dataset["pipelines"] = with_crop_size(dataset["pipelines"], size)
    dataset["augment_on"] = "device"
    return {"type": "RepeatDataset", "times": times, "dataset": dataset}


def plot_is_configurable() -> bool:
    """Whether this selfsup version has ``[log_config] plot`` (curves drawn after a run)."""
    import attrs

    from selfsup_core.engine.settings import RunSettings

    return "plot" in attrs.fields_dict(RunSettings)


def derive(args: argparse.Namespace, tmp: Path, images: Path, times: int) -> tuple[Path, int]:
    """Write the derived config (inheriting ``args.config``) into ``tmp``; returns its path and
    the number of views per image."""
    from selfsup_core.config import load_config
    from selfsup_core.testing import derive_config

    config = load_config(args.config.resolve())
    replace = {"data.train": train_table(config, images, args.size, times)}
    if "evaluation" in config.data:  # no online evaluation: interval 0, no bank or test set
        replace["evaluation"] = {"interval": 0}
    values: dict[str, Any] = {
        "runner.max_epochs": 1,
        "runner.precision": args.precision,
        "runner.channels_last": {"true": True, "false": False}.get(args.channels_last, "auto"),
        "data.samples_per_gpu": args.batch,
        "data.workers_per_gpu": args.workers,
        "data.persistent_workers": False,
        "log_config.interval": args.log_interval,
        "log_config.progress": "none",
    }
    if plot_is_configurable():
        values["log_config.plot"] = False
    views = sum(int(n) for n in replace["data.train"]["dataset"].get("num_views", [1]))
    return derive_config(args.config.resolve(), tmp / "derived.toml", replace=replace, values=values), views


def steady_speeds(records: list[dict[str, Any]], warmup: int) -> tuple[list[float], list[float]]:
    """``(all, kept)`` images/s of the ``train`` records: kept leaves out the first ``warmup``."""
    speeds = [float(r["images_per_s"]) for r in records if "images_per_s" in r]
    kept = speeds[warmup:]
    if not kept:
        raise SystemExit(f"only {len(speeds)} images/s records and --warmup-records {warmup}: nothing left to "
                         "measure; raise --iters or lower --log-interval")
    return speeds, kept


def machine_info(device: str) -> dict[str, Any]:
    """Platform, CPU count, torch and the GPU of ``device`` (the first GPU for a CPU run), read
    after the run (this process holds no CUDA context while it trains)."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(torch.device(device) if device.startswith("cuda") else None)
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": gpu}


def command_line(argv: list[str] | None) -> str:
    """The benchmark's command line as given (shell-quoted)."""
    given = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "benchmarks/gpu_simclr_throughput.py", *given])


def write_result(result: dict[str, Any], out: Path) -> None:
    """Write ``out`` atomically (a temporary file beside it, then a rename)."""
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    # a terminated benchmark must not leave its selfsup-run behind
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    args = parse_args(argv)
    device = args.device or "cuda"
    device_type = device.split(":")[0]
    if device_type == "cuda" and not cuda_available():
        print(SKIP_LINE)
        return 0
    fill_defaults(args, device_type == "cuda")

    from selfsup_core.testing import read_metrics

    num_images = pool_size(args.batch, args.iters, args.num_images)
    times = math.ceil(args.batch * args.iters / num_images)
    selfsup_run = str(Path(sys.executable).with_name("selfsup-run"))
    with tempfile.TemporaryDirectory(prefix="gpu_simclr_") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        images = write_images(tmp / "images.npz", num_images, args.image_size)
        prepare_seconds = time.perf_counter() - start
        derived, views = derive(args, tmp, images, times)
        work = tmp / "train"
        command = [selfsup_run, str(derived), "--work-dir", str(work), "--device", device]
        if args.cfg_options:
            command += ["--cfg-options", *args.cfg_options]
        print(f"training ResNet-50 SimCLR ({args.config.name}) on {device}: batch {args.batch}, {args.size} px, "
              f"{args.iters} iterations, {args.workers} workers ...", flush=True)
        wall_seconds = run(command, tmp / "train.log")
        records = read_metrics(work, "train")
        log_lines = (tmp / "train.log").read_text().splitlines()
        header = next((line for line in log_lines if line.startswith("selfsup ")), "")

    speeds, kept = steady_speeds(records, args.warmup_records)
    median = statistics.median(kept)
    machine = machine_info(device)
    result = {
        "benchmark": "gpu_simclr_throughput",
        "command": command_line(argv),
        "config": str(args.config.resolve().relative_to(REPO)) if args.config.resolve().is_relative_to(REPO)
        else str(args.config),
        "note": CPU_NOTE if device_type == "cpu" else "",
        "run": header,
        "device": device_type,
        "gpu": machine["cuda"] if device_type == "cuda" else None,
        "precision": precision_of(header),
        "channels_last": args.channels_last,
        "size": args.size,
        "batch": args.batch,
        "iters": int(records[-1]["iter"]) if records else None,
        "workers": args.workers,
        "log_interval": args.log_interval,
        "warmup_records": args.warmup_records,
        "data": {"source": "synthetic uint8 RGB in memory (NumpyArrays), no decoding", "image_size": args.image_size,
                 "num_images": num_images, "repeats": times, "augment_on": "device"},
        "cfg_options": args.cfg_options,
        "images_per_s": round(median, 1),
        "views_per_s": round(median * views, 1),
        "images_per_s_min": round(min(kept), 1),
        "images_per_s_max": round(max(kept), 1),
        "images_per_s_records": speeds,
        "wall_seconds": round(wall_seconds, 1),
        "prepare_seconds": round(prepare_seconds, 1),
        "machine": machine,
    }
    where = result["gpu"] or f"CPU ({machine['cpus']} cores)"
    print(f"ResNet-50 SimCLR, {args.size} px, batch {args.batch}, {result['precision']}: {median:,.1f} images/s "
          f"(median of {len(kept)} records, {min(kept):,.1f}-{max(kept):,.1f}; {median * views:,.1f} views/s) "
          f"on {where}; selfsup-run took {wall_seconds:.1f} s")
    if device_type == "cpu":
        print(CPU_NOTE)
    out = args.out or RESULTS / f"gpu_simclr_throughput_{device_type}.json"
    write_result(result, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
