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

import torch
from channels_last import compare
from selfsup_core.engine.runtime import cpu_has_native_bf16


def main(argv: list[str] | None = None) -> int:
    return compare(argv, benchmark="precision", description=__doc__.splitlines()[0],
                   variants={"fp32": {"channels_last": True}, "bf16": {"channels_last": True, "autocast": torch.bfloat16}},
                   note="one SGD training step, channels_last; precisions alternate, best of the rounds; figures from a "
                        "shared machine vary between runs, compare within one run",
                   machine={"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "cpu_native_bf16": cpu_has_native_bf16(),
                            "cuda_bf16": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None})


if __name__ == "__main__":
    raise SystemExit(main())
