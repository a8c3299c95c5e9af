"""Training precision of conv nets: one SGD training step in fp32 and under bf16 autocast,
side by side in one process, channels_last in both.

The two precisions alternate for ``--rounds`` rounds and the best images/s of each is kept.
On CPUs with native bf16 (AVX512-BF16 or AMX; ``selfsup_core.engine.runtime.cpu_has_native_bf16``)
this is the measurement behind running CPU pre-training with ``[runner] precision = "bf16"``;
``"auto"`` keeps fp32 on the CPU so that results do not depend on the CPU model.

    python benchmarks/precision.py [--device cpu|cuda] [--threads N]

Writes ``benchmarks/results/precision_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from channels_last import CASES, images_per_second
from selfsup_core.engine.runtime import cpu_has_native_bf16

RESULTS = Path(__file__).resolve().parent / "results"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CPU: oneDNN's bf16 check)."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU (default 1)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    rows = []
    for name, kwargs, batch, size in CASES:
        best: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
        for _ in range(args.rounds):
            for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                speed = images_per_second(kwargs, batch, size, True, device, args.steps, autocast=dtype)
                best[precision] = max(best[precision], speed)
        rows.append({"model": name, "batch": batch, "fp32_images_per_s": round(best["fp32"], 1),
                     "bf16_images_per_s": round(best["bf16"], 1),
                     "speedup": round(best["bf16"] / best["fp32"], 2)})
        print(f"{name}: fp32 {best['fp32']:.0f} img/s, bf16 autocast {best['bf16']:.0f} img/s "
              f"(x{best['bf16'] / best['fp32']:.2f})", flush=True)
    record = {
        "benchmark": "precision",
        "command": f"python benchmarks/precision.py --device {args.device} --threads {args.threads}",
        "note": "one SGD training step, channels_last; precisions alternate, best of the rounds; figures from a "
                "shared machine vary between runs, compare within one run",
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": args.threads,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": native_bf16(device),
                    "cuda": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"precision_{device.type}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out.relative_to(RESULTS.parents[1])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
