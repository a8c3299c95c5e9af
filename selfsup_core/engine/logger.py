"""Progress display and metric files of a run (rank 0 only).

* ``metrics.jsonl`` in the work dir: one JSON object per line, ``{"mode": "train", "epoch",
  "iter", "lr", "loss", <each loss>, "images_per_s", "time"}`` at every log interval and
  at the end of each epoch; other modes (``"val"``) are written by evaluators through
  :meth:`RunLogger.log_metrics`.
* A progress line on stderr (epoch, iteration, losses, lr, images/s, ETA): redrawn in place
  on a terminal, one line per log interval otherwise.
* TensorBoard scalars when ``[log_config] tensorboard = true`` (needs the ``tensorboard``
  package).
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any

from ..errors import SelfSupError

METRICS_FILE = "metrics.jsonl"


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_results(results: Any) -> str:
    """``knn_top1 0.8512, knn_top5 0.9931``: named results (a mapping) in one line, numbers
    with 4 decimals. Used for evaluation records: the run summary, ``selfsup-run eval``."""
    return ", ".join(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in results.items())


class RunLogger:
    """Writes metrics and progress for the main process; a no-op elsewhere."""

    def __init__(
        self,
        work_dir: Path,
        *,
        enabled: bool,
        progress: str = "auto",
        tensorboard: bool = False,
        stream: IO[str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self.style = ("bar" if interactive else "lines") if progress == "auto" else progress
        self._file = None
        self._writer = None
        self._bar_open = False
        self.best: dict[str, float] = {}
        if not enabled:
            return
        self._file = open(Path(work_dir) / METRICS_FILE, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        from .runlog import RUN_LOG, TeeStream

        self.stream = TeeStream(self.stream, Path(work_dir) / RUN_LOG)  # the console output, also in run.log
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise SelfSupError(
                    "[log_config] tensorboard = true needs the tensorboard package: pip install tensorboard"
                ) from exc
            self._writer = SummaryWriter(str(Path(work_dir) / "tensorboard"))

    # -- metrics ----------------------------------------------------------------------------
    def log_metrics(self, record: dict[str, Any], step: int | None = None) -> None:
        """Append one record to ``metrics.jsonl`` (and TensorBoard, under ``mode/key``)."""
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        assert self._file is not None
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        if self._writer is not None and step is not None:
            mode = record.get("mode", "train")
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("time", "iter", "epoch"):
                    self._writer.add_scalar(f"{mode}/{key}", value, step)

    # -- progress ---------------------------------------------------------------------------
    def progress(
        self,
        *,
        epoch: int,
        max_epochs: int,
        inner_iter: int,
        iters_per_epoch: int,
        losses: dict[str, float],
        lr: float,
        images_per_s: float,
        eta_s: float,
    ) -> None:
        if not self.enabled or self.style == "none":
            return
        loss_text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        width = len(str(iters_per_epoch))
        line = (
            f"epoch {epoch + 1}/{max_epochs} [{inner_iter:>{width}}/{iters_per_epoch}] {loss_text} "
            f"lr {lr:.3e} {images_per_s:,.0f} img/s ETA {format_duration(eta_s)}"
        )
        if self.style == "bar":
            self.stream.write("\r\033[K" + line)
            self._bar_open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line for the user (ends any in-place progress line first)."""
        if not self.enabled:
            return
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        if self._file is not None:
            self._file.close()
            self._file = None
        close_log = getattr(self.stream, "close", None) if type(self.stream).__name__ == "TeeStream" else None
        if close_log is not None:
            close_log()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["METRICS_FILE", "RunLogger", "format_duration", "format_results"]
