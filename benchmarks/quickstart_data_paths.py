"""The quick start's training speed on each data path: ``--iters`` iterations of
``simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml`` with ``data.resident`` true and
false (no evaluation), the median images/s of the log records after the first.

    python benchmarks/quickstart_data_paths.py [--iters 12] [--device cpu]
"""
from __future__ import annotations

import argparse
import io
import signal
import statistics
import tempfile
from pathlib import Path
from typing import Any

from selfsup_core.config import load_config
from selfsup_core.engine.trainer import RunInterrupted, Trainer
from selfsup_core.testing import read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "examples/configs/simclr_resnet18-w16_1xb128-coslr-3e_fashion-mnist.toml"


class StopAfter:
    """A trainer hook: stop (as SIGTERM would, with a checkpoint) after iteration ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at

    def selfsup_after_iter(self, runner: Any, outputs: Any) -> None:
        if runner.iter + 1 == self.at:
            runner._stop_signal = signal.SIGTERM


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    interval = max(1, args.iters // 3)
    for resident in ("true", "false"):
        with tempfile.TemporaryDirectory() as tmp:
            options = [f"data.resident={resident}", "evaluation.interval=0", f"log_config.interval={interval}"]
            trainer = Trainer(load_config(CONFIG, options), work_dir=Path(tmp) / "w", device=args.device,
                              stream=io.StringIO())
            trainer.hooks.append(("stop_after", StopAfter(args.iters)))
            try:
                trainer.run()
            except RunInterrupted:
                pass
            rates = [float(r["images_per_s"]) for r in read_metrics(Path(tmp) / "w", "train")]
            print(f"{trainer.data_path}: {statistics.median(rates[1:] or rates):,.1f} images/s (records {rates})",
                  flush=True)


if __name__ == "__main__":
    main()
