"""Memory format of conv nets: one SGD training step (forward, backward, step) in contiguous
(NCHW) and channels_last (NHWC) memory, side by side in one process.

The two formats alternate for ``--rounds`` rounds and the best images/s of each is kept. This
is the measurement behind ``[runner] channels_last = "auto"`` choosing channels_last on the
CPU as well as on CUDA (``selfsup_core.engine.runtime.use_channels_last``).

    python benchmarks/channels_last.py [--device cpu|cuda] [--threads N]

Writes ``benchmarks/results/channels_last_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"

#: (name, ResNet arguments, batch, image size)
CASES: list[tuple[str, dict[str, Any], int, int]] = [
    ("ResNet-18 width 16, cifar stem, 1x28x28",
     {"depth": 18, "in_channels": 1, "base_channels": 16, "stem_channels": 16, "stem_type": "cifar"}, 128, 28),
    ("ResNet-18, cifar stem, 3x32x32", {"depth": 18, "stem_type": "cifar"}, 32, 32),
    ("ResNet-50, 3x96x96", {"depth": 50}, 16, 96),
]


def images_per_second(kwargs: dict[str, Any], batch: int, size: int, channels_last: bool, device: torch.device,
                      steps: int, autocast: torch.dtype | None = None) -> float:
    """Images/s of ``steps`` SGD steps of a ResNet built from ``kwargs`` (after one warm-up
    step), forward under ``torch.autocast(autocast)`` when a dtype is given."""
    from selfsup_models.backbones.resnet import ResNet

    model = ResNet(out_indices=[4], **kwargs).to(device)
    x = torch.randn(batch, kwargs.get("in_channels", 3), size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    start = 0.0
    for step in range(steps + 1):  # the first step warms up
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = model(x)[-1].float().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def compare(argv: list[str] | None, *, benchmark: str, description: str, variants: dict[str, dict[str, Any]],
            note: str, machine: dict[str, Any] | None = None) -> int:
    """Run every case of :data:`CASES` in each of two ``variants`` (label -> keyword arguments of
    :func:`images_per_second`), alternating for ``--rounds`` rounds and keeping the best
    images/s of each; print them and write ``results/<benchmark>_<device>.json`` with the
    speed-up of the second variant over the first."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU (default 1)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    (base, base_kwargs), (other, other_kwargs) = variants.items()
    rows = []
    for name, kwargs, batch, size in CASES:
        best = {base: 0.0, other: 0.0}
        for _ in range(args.rounds):
            for label, options in ((base, base_kwargs), (other, other_kwargs)):
                best[label] = max(best[label], images_per_second(kwargs, batch, size, device=device,
                                                                 steps=args.steps, **options))
        rows.append({"model": name, "batch": batch, f"{base}_images_per_s": round(best[base], 1),
                     f"{other}_images_per_s": round(best[other], 1), "speedup": round(best[other] / best[base], 2)})
        print(f"{name}: {base} {best[base]:.0f} img/s, {other} {best[other]:.0f} img/s "
              f"(x{best[other] / best[base]:.2f})", flush=True)
    record = {
        "benchmark": benchmark,
        "command": f"python benchmarks/{benchmark}.py --device {args.device} --threads {args.threads}",
        "note": note,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    **(machine or {}), "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{benchmark}_{device.type}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parents[1])}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return compare(argv, benchmark="channels_last", description=__doc__.splitlines()[0],
                   variants={"contiguous": {"channels_last": False}, "channels_last": {"channels_last": True}},
                   note="one SGD training step, fp32; formats alternate, best of the rounds; figures from a shared "
                        "machine vary between runs, compare within one run")


if __name__ == "__main__":
    raise SystemExit(main())
