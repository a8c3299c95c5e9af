"""Throughput (images/s) of a SimCLR two-view augmentation pipeline, three ways side by side.

Pipeline per view: RandomResizedCrop(size), RandomHorizontalFlip, ColorJitter(0.4, 0.4, 0.4, 0.1)
with p=0.8, RandomGrayscale(p=0.2), Gaussian blur (sigma 0.1..2, kernel 13, p=0.5), then float
conversion and Normalize. Paths:

- ``ours-cpu``: selfsup-data transforms built through the core's builder, all in DataLoader workers.
- ``ours-device``: the same pipeline split by ``split_pipeline``: crop/flip in the workers
  (uint8 tensors), the rest batched by ``BatchDeviceTransform`` on CUDA when available, else
  on the CPU in the main process with one thread (the output says which).
- ``torchvision``: a hand-written ``torchvision.transforms.v2.Compose`` doing the same work in
  the workers.

Data: 32 px views from Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, 28x28 grey turned
RGB; synthetic noise when absent) and 224 px views from synthetic 256x256 RGB images. Images
sit in memory as PIL images (no decoding). Each path gets one warm-up batch (not timed, it
includes worker start-up), then ``--batches`` timed batches; images/s counts both views.
Writes ``benchmarks/results/data_throughput.json``.

    python benchmarks/data_throughput.py [--workers 2] [--batches 10] [--batch-size-32 256]
        [--batch-size-224 32] [--sizes 32 224] [--device auto|cpu|cuda]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def simclr_config(size: int) -> list[dict[str, Any]]:
    """The SimCLR view pipeline as config tables (what a TOML file would say)."""
    return [
        {"type": "RandomResizedCrop", "size": size},
        {"type": "RandomHorizontalFlip"},
        {"type": "RandomAppliedTrans", "p": 0.8,
         "transforms": [{"type": "ColorJitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}]},
        {"type": "RandomGrayscale", "p": 0.2},
        {"type": "GaussianBlur", "sigma_min": 0.1, "sigma_max": 2.0, "p": 0.5, "kernel_size": 13},
        {"type": "ToImage"},
        {"type": "ToDtype", "dtype": "float32", "scale": True},
        {"type": "Normalize", "mean": MEAN, "std": STD},
    ]


def torchvision_pipeline(size: int) -> v2.Compose:
    """The same work written by hand with torchvision.transforms.v2."""
    return v2.Compose([
        v2.RandomResizedCrop(size),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel_size=13, sigma=(0.1, 2.0))], p=0.5),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(MEAN, STD),
    ])


def load_images(size: int, count: int) -> tuple[list[Image.Image], str]:
    """``count`` RGB PIL images and a description of where they came from."""
    rng = np.random.default_rng(0)
    if size <= 64 and FASHION_MNIST.exists():
        with gzip.open(FASHION_MNIST, "rb") as f:
            raw = f.read()
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
        arrays = np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)[:count]
        return [Image.fromarray(a).convert("RGB") for a in arrays], f"Fashion-MNIST {rows}x{cols} grey as RGB"
    side = 256 if size > 64 else 40
    arrays = rng.integers(0, 256, (count, side // 8, side // 8, 3), dtype=np.uint8)
    images = [Image.fromarray(a).resize((side, side), Image.BILINEAR) for a in arrays]
    return images, f"synthetic {side}x{side} RGB"


class TwoViews(Dataset):
    """In-memory PIL images -> ``{"img": [view, view], "label": 0, "idx": i}``."""

    def __init__(self, images: list[Image.Image], run: Callable[[Any], Any]) -> None:
        self.images, self.run = images, run

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        img = self.images[idx]
        return {"img": [self.run(img), self.run(img)], "label": 0, "idx": idx}


def measure(dataset: Dataset, batch_size: int, batches: int, workers: int, device: torch.device,
            on_batch: Callable[[dict], dict] | None) -> float:
    """Images per second (both views) over ``batches`` timed batches after one warm-up batch."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    images = 0
    start = None
    for i, batch in enumerate(loader):
        views = [v.to(device, non_blocking=True) for v in batch["img"]]
        batch = {**batch, "img": views}
        if on_batch is not None:
            with torch.no_grad():
                batch = on_batch(batch)
        if i == 0:  # warm-up: worker start-up, first kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            continue
        images += sum(v.shape[0] for v in batch["img"])
        if i == batches:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert start is not None and images > 0, "not enough data for the requested batches"
    return images / (time.perf_counter() - start)


def run_size(size: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from selfsup_core.build import build
    from selfsup_data.device_augment import BatchDeviceTransform, split_pipeline
    batch_size = args.batch_size_32 if size <= 64 else args.batch_size_224
    images, source = load_images(size, batch_size * (args.batches + 1))
    ours = [build(table, "transforms") for table in simclr_config(size)]
    cpu_part, device_part = split_pipeline(ours)
    device_transform = BatchDeviceTransform([device_part, device_part])
    paths = {
        "ours-cpu": (TwoViews(images, _Runner(ours)), None),
        "ours-device": (TwoViews(images, _Runner(cpu_part)), device_transform),
        "torchvision": (TwoViews(images, torchvision_pipeline(size)), None),
    }
    rates = {}
    for name, (dataset, on_batch) in paths.items():
        rates[name] = measure(dataset, batch_size, args.batches, args.workers, device, on_batch)
        print(f"  {size:>4} px  {name:<12} {rates[name]:10.1f} images/s", flush=True)
    return {"size": size, "data": source, "batch_size": batch_size, "timed_batches": args.batches,
            "images_per_second": {k: round(v, 1) for k, v in rates.items()}}


class _Runner:
    """Picklable: run a list of transforms (with the extra-outputs convention) and keep the image."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        from selfsup_data.transforms import apply_transforms
        return apply_transforms(self.transforms, img)["img"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--batches", type=int, default=10, help="timed batches per path and size")
    parser.add_argument("--batch-size-32", type=int, default=256)
    parser.add_argument("--batch-size-224", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where ours-device runs its batched part (auto: CUDA when available)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data_throughput.json"))
    args = parser.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    where = torch.cuda.get_device_name(device) if use_cuda else "CPU (no CUDA: the batched part runs in the main process)"
    if not use_cuda:
        torch.set_num_threads(1)  # the main process shares the cores with the workers; don't oversubscribe
    print(f"ours-device batched part on: {where}; {args.workers} workers; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}", flush=True)
    results = [run_size(size, args, device) for size in args.sizes]
    print()
    print(f"{'size':>6} | {'ours-cpu':>10} | {'ours-device':>11} | {'torchvision':>11}   (images/s, two views)")
    for r in results:
        ips = r["images_per_second"]
        print(f"{r['size']:>4}px | {ips['ours-cpu']:>10.1f} | {ips['ours-device']:>11.1f} | {ips['torchvision']:>11.1f}")
    command = "python benchmarks/data_throughput.py " + " ".join(sys.argv[1:])
    result = {
        "benchmark": "data_throughput",
        "command": command.strip(),
        "pipeline": "SimCLR two views: RandomResizedCrop, flip, ColorJitter(0.4,0.4,0.4,0.1) p=0.8, "
                    "grayscale p=0.2, blur sigma 0.1-2 k=13 p=0.5, Normalize",
        "device_path_runs_on": where,
        "workers": args.workers,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min_at_start": load_before,
        "note": "figures from a shared machine vary between runs; compare paths within one run",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
