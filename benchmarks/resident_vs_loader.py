"""Data-path throughput of a config's training pipeline: device-resident batches against the
DataLoader (plus the batched device transform), no model.

    python benchmarks/resident_vs_loader.py [CONFIG] [--device cpu] [--batches 20]

For each path it builds the trainer's data path for CONFIG (default: the quick start), draws
one batch (start-up), then times ``--batches`` batches including the device transform, and
prints samples/s. The DataLoader path uses the config's ``workers_per_gpu``.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import torch

from selfsup_core.config import load_config
from selfsup_core.engine.data import to_device
from selfsup_core.engine.trainer import Trainer

QUICKSTART = Path(__file__).resolve().parents[1] / "examples/configs/simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", type=Path, default=QUICKSTART)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    for resident in ("false", "true"):
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(load_config(args.config, [f"data.resident={resident}", "evaluation.interval=0"]),
                              work_dir=Path(tmp) / "w", device=args.device, stream=io.StringIO())
            trainer._setup()
            try:
                batches = iter(trainer.data_loader)
                next(batches)
                start, count = time.perf_counter(), 0
                for _ in range(args.batches):
                    batch = to_device(next(batches), trainer.device)
                    if trainer.device_transform is not None:
                        with torch.no_grad():
                            batch = trainer.device_transform(batch)
                    img = batch["img"]
                    count += (img[0] if isinstance(img, (list, tuple)) else img).shape[0]
                    if trainer.device.type == "cuda":
                        torch.cuda.synchronize(trainer.device)
                seconds = time.perf_counter() - start
                print(f"{trainer.data_path}: {count / seconds:,.0f} samples/s ({count} samples)", flush=True)
            finally:
                trainer._teardown()
                trainer._work.close()


if __name__ == "__main__":
    main()
