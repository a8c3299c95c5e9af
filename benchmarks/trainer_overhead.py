"""Trainer overhead: the same model, data and optimizer stepped by selfsup's Trainer and by
a hand-written PyTorch loop, side by side in one process.

Both sides load batches with a DataLoader from the same in-memory dataset (random noise
added per sample, an "augmentation"), run forward under the same autocast setting, sum the
losses, backward, step SGD with a cosine schedule, and zero the gradients. The trainer adds
what it always does: per-sample seeding, loss bookkeeping on the device, hooks, progress
and metrics at log intervals, and one checkpoint per epoch. Runs alternate (trainer, plain,
trainer, plain ...) and the median seconds per iteration of each are compared.

    python benchmarks/trainer_overhead.py                  # CPU: small conv net, 32 px
    python benchmarks/trainer_overhead.py --resnet50       # GPU: ResNet-50, 224 px, batch 256, bf16,
                                                          # channels_last (images/s, both sides)

Writes ``benchmarks/results/trainer_overhead[_resnet50].json``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_components import BenchAlgorithm, BenchDataset, Stopwatch  # noqa: E402

from selfsup_core.config import Config  # noqa: E402
from selfsup_core.engine.trainer import Trainer  # noqa: E402
from selfsup_core.import_paths import allowing  # noqa: E402


def make_config(args: argparse.Namespace, device: str) -> dict:
    return {
        "seed": 0,
        "model": {"type": "_bench_components:BenchAlgorithm", "arch": args.arch, "width": args.width},
        "data": {
            "samples_per_gpu": args.batch,
            "workers_per_gpu": args.workers,
            "pin_memory": device == "cuda",
            "persistent_workers": args.workers > 0,
            "train": {"type": "_bench_components:BenchDataset", "length": args.batch * args.iters,
                      "size": args.size, "channels": 3, "uint8": args.uint8},
        },
        "optimizer": {"type": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "lr_config": {"policy": "CosineAnnealing", "min_lr": 0.0, "by_epoch": False},
        "runner": {"max_epochs": 1, "device": device, "precision": args.precision,
                   "channels_last": args.channels_last},
        "log_config": {"interval": 50, "progress": "none"},
        "hooks": [{"type": "_bench_components:Stopwatch", "skip": args.warmup}],
    }


def trainer_seconds_per_iter(args: argparse.Namespace, device: str) -> float:
    with tempfile.TemporaryDirectory() as work_dir, allowing():  # the config names _bench_components:...
        trainer = Trainer(Config(make_config(args, device), filename="trainer_overhead"), work_dir=work_dir)
        trainer.run()
        watch = next(h for _, h in trainer.hooks if isinstance(h, Stopwatch))
        return watch.seconds_per_iter()


def plain_seconds_per_iter(args: argparse.Namespace, device: str) -> float:
    """The hand-written loop a careful user would write for the same job."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = BenchAlgorithm(arch=args.arch, width=args.width).to(dev)
    channels_last = args.channels_last is True or (args.channels_last == "auto" and dev.type == "cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = BenchDataset(length=args.batch * args.iters, size=args.size, channels=3, uint8=args.uint8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=dev.type == "cuda",
                                         persistent_workers=args.workers > 0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    total = len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * i / total)))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if args.precision == "auto" and dev.type == "cuda":
        dtype = torch.bfloat16
    autocast = torch.autocast(dev.type, dtype=dtype) if dtype is not None else nullcontext()
    model.train()
    start = None
    for i, batch in enumerate(loader):
        if i == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        img = batch["img"].to(dev, non_blocking=True)
        if img.dtype == torch.uint8:
            img = img.float().div_(255)
        if channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        with autocast:
            losses = model(img)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (total - args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resnet50", action="store_true", help="ResNet-50, 224 px, batch 256, bf16 (a GPU run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="small", choices=["small", "resnet50"])
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=60, help="iterations per run")
    parser.add_argument("--warmup", type=int, default=10, help="iterations not timed at the start of each run")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each side (alternating)")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precision", default="fp32", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--channels-last", dest="channels_last", default="auto")
    parser.add_argument("--uint8", action="store_true", help="the dataset yields uint8 images (converted on device)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.resnet50:
        args.arch, args.size, args.batch, args.precision = "resnet50", 224, 256, "bf16"
        args.workers = max(args.workers, 8)
    args.channels_last = {"true": True, "false": False}.get(str(args.channels_last).lower(), "auto")
    torch.set_num_threads(torch.get_num_threads())

    trainer_times, plain_times = [], []
    for _ in range(args.repeat):
        trainer_times.append(trainer_seconds_per_iter(args, args.device))
        plain_times.append(plain_seconds_per_iter(args, args.device))
    t_trainer, t_plain = statistics.median(trainer_times), statistics.median(plain_times)
    ratio = t_trainer / t_plain
    result = {
        "benchmark": "trainer_overhead",
        "command": "python benchmarks/trainer_overhead.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "setup": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "trainer_ms_per_iter": round(t_trainer * 1e3, 3),
        "plain_ms_per_iter": round(t_plain * 1e3, 3),
        "trainer_images_per_s": round(args.batch / t_trainer, 1),
        "plain_images_per_s": round(args.batch / t_plain, 1),
        "overhead_percent": round((ratio - 1) * 100, 2),
        "throughput_ratio": round(t_plain / t_trainer, 4),
        "runs": {"trainer_ms": [round(t * 1e3, 3) for t in trainer_times],
                 "plain_ms": [round(t * 1e3, 3) for t in plain_times]},
    }
    print(f"{'':10} {'ms/iter':>10} {'images/s':>10}")
    print(f"{'trainer':10} {t_trainer * 1e3:10.2f} {args.batch / t_trainer:10.1f}")
    print(f"{'plain':10} {t_plain * 1e3:10.2f} {args.batch / t_plain:10.1f}")
    print(f"trainer overhead: {(ratio - 1) * 100:+.2f}% per iteration (throughput ratio {t_plain / t_trainer:.4f}) "
          f"on {result['device']}")
    name = "trainer_overhead_resnet50.json" if args.resnet50 else "trainer_overhead.json"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
