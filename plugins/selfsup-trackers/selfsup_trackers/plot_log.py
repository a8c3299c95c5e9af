"""``selfsup-run plot-log WORK_DIR [-o OUT.png]``: plot a run's curves from ``metrics.jsonl``.

Panels (each only when the log has data for it):

* loss vs iteration: ``loss`` and, when the model returns several, each loss term (every
  numeric key of ``"train"`` records whose name contains ``loss``);
* other training metrics vs iteration (e.g. DeepCluster's ``acc``, ODC's ``change_ratio``);
* learning rate vs iteration;
* accuracy vs epoch: every ``*_topK`` / ``*acc*`` key of evaluation records (``"eval"``,
  ``"val"`` ...), e.g. ``knn_top1``, ``knn_top5``, ``linear_top1``; ``best_*`` keys repeat
  these and are left out.

When the log has no per-interval ``"train"`` records, the per-epoch means
(``"train_epoch"``) are plotted instead. A resumed run appends to the same file, so an
iteration (or epoch) can appear twice: a record replaces every earlier record of the same
mode at the same or a later iteration (the later run wins). The PNG is written atomically
(a temporary file beside it, then a rename). matplotlib is imported when the command runs.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from selfsup_core.api import METRICS_FILE, SelfSupError, atomic_write, describe_exception

DEFAULT_OUT = "curves.png"
TRAIN_MODES = ("train", "train_epoch")
# numeric keys of training records that are bookkeeping, not curves
NOT_CURVES = frozenset({"time", "epoch", "iter", "lr", "images_per_s", "mode"})
ACCURACY_KEY = re.compile(r"(_top\d+$|^top\d+$|acc)")
MAX_EPOCH_MARKS = 60


# -- reading --------------------------------------------------------------------------------
@attrs.define
class MetricsLog:
    """The records of a metrics file, with what was skipped."""

    path: Path
    records: list[dict[str, Any]]
    bad_lines: int = 0
    first_bad: str = ""


def resolve_log(target: str) -> tuple[Path, Path]:
    """``(metrics file, work dir)`` for a work dir or a ``.jsonl`` path given on the command line."""
    path = Path(target)
    if path.is_dir():
        log = path / METRICS_FILE
        if not log.is_file():
            raise SelfSupError(
                f"{path}: no {METRICS_FILE} in this folder; pass a run's work dir (the trainer writes "
                f"WORK_DIR/{METRICS_FILE}) or the .jsonl file itself"
            )
        return log, path
    if path.is_file():
        return path, path.parent
    raise SelfSupError(f"{path}: no such work dir or metrics file; pass a run's work dir or its {METRICS_FILE}")


def read_log(path: Path) -> MetricsLog:
    """Parse one JSON object per line; blank lines are ignored, malformed ones counted."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SelfSupError(f"{path}: cannot read it ({describe_exception(exc)})") from exc
    log = MetricsLog(path, [])
    lines = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        lines += 1
        record, problem = _parse_line(line)
        if record is not None:
            log.records.append(record)
            continue
        log.bad_lines += 1
        if not log.first_bad:
            log.first_bad = f"line {number}: {problem}"
    if lines == 0:
        raise SelfSupError(f"{path}: the metrics log is empty; the trainer appends a record every "
                           "log_config.interval iterations, so let the run log something first")
    if not log.records:
        raise SelfSupError(f"{path}: {log.first_bad}; no line of the file is a JSON record "
                           f"(is it a selfsup {METRICS_FILE}?)")
    return log


def _parse_line(line: str) -> tuple[dict[str, Any] | None, str]:
    """``(record, "")`` or ``(None, what is wrong)``."""
    try:
        value = json.loads(line)
    except ValueError as exc:
        return None, f"not JSON ({' '.join(str(exc).split())})"
    if not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, ""


# -- series ---------------------------------------------------------------------------------
@attrs.define
class Series:
    """One curve: x values (iterations or epochs) and y values, in file order."""

    xs: list[float] = attrs.field(factory=list)
    ys: list[float] = attrs.field(factory=list)

    def add(self, x: float, y: float) -> None:
        """Append a point; a point at an x not after the last one starts a resumed run, whose
        records replace the earlier ones from that x on."""
        if self.xs and x <= self.xs[-1]:
            keep = next((i for i, old in enumerate(self.xs) if old >= x), len(self.xs))
            del self.xs[keep:], self.ys[keep:]
        self.xs.append(x)
        self.ys.append(y)


def _number(value: Any) -> float | None:
    """A float for an int/float JSON value (``NaN`` kept, it draws a gap), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _series(records: Iterable[dict[str, Any]], x_key: str, keep: Any) -> dict[str, Series]:
    """Per key: the curve of every numeric ``key`` for which ``keep(key)`` holds, against
    ``x_key``; the keys in order of first appearance."""
    curves: dict[str, Series] = {}
    for record in records:
        x = _number(record.get(x_key))
        if x is None or math.isnan(x):
            continue
        for key, value in record.items():
            y = _number(value)
            if y is not None and keep(key):
                curves.setdefault(key, Series()).add(x, y)
    return curves


def _with_mode(records: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("mode", "train") == mode]


@attrs.define
class Panel:
    """One subplot: its curves, axis labels, and how the summary line names it."""

    title: str
    xlabel: str
    ylabel: str
    curves: dict[str, Series]
    unit: str  # "points" or "evals"
    markers: bool = False

    def summary(self) -> str:
        count = max(len(s.xs) for s in self.curves.values())
        unit = self.unit if count != 1 else self.unit[:-1]
        return f"{'/'.join(self.curves)} ({count} {unit})"


def build_panels(records: list[dict[str, Any]]) -> tuple[list[Panel], list[float]]:
    """The panels with data, and the iterations at which epochs ended (for marks)."""
    train = _with_mode(records, "train")
    epochs = _with_mode(records, "train_epoch")
    per_epoch = not any(_number(r.get("iter")) is not None for r in train)
    source = epochs if per_epoch else train
    step = "iteration" + (" (epoch means)" if per_epoch else "")
    losses = _series(source, "iter", lambda k: "loss" in k and k not in NOT_CURVES)
    others = _series(source, "iter", lambda k: "loss" not in k and k not in NOT_CURVES)
    lr = _series(source, "iter", lambda k: k == "lr")
    accuracy: dict[str, Series] = {}
    for mode in dict.fromkeys(r.get("mode", "train") for r in records):
        if mode in TRAIN_MODES or not isinstance(mode, str):
            continue
        found = _series(_with_mode(records, mode), "epoch",
                        lambda k: bool(ACCURACY_KEY.search(k)) and not k.startswith("best_") and "loss" not in k)
        accuracy.update({(k if mode == "eval" else f"{mode}/{k}"): s for k, s in found.items()})
    panels = [
        Panel("loss", step, "loss", losses, "points", markers=per_epoch),
        Panel("training metrics", step, "value", others, "points", markers=per_epoch),
        Panel("learning rate", step, "lr", lr, "points", markers=per_epoch),
        Panel("accuracy", "epoch", "accuracy", accuracy, "evals", markers=True),
    ]
    marks = _series(epochs, "epoch", lambda k: k == "iter").get("iter", Series()).ys
    return [p for p in panels if p.curves], marks


# -- drawing --------------------------------------------------------------------------------
def _import_matplotlib() -> tuple[Any, Any, Any]:
    """Figure, the Agg canvas and MaxNLocator (no pyplot, no global backend switch)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise SelfSupError(
            "plot-log needs matplotlib: pip install matplotlib (or pip install 'selfsup-eval[tsne]')"
        ) from exc
    return Figure, FigureCanvasAgg, MaxNLocator


def draw(panels: list[Panel], marks: list[float], title: str) -> Any:
    """A matplotlib Figure with one row per panel."""
    Figure, FigureCanvasAgg, MaxNLocator = _import_matplotlib()
    figure = Figure(figsize=(9, 2.8 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        for name, series in panel.curves.items():
            ax.plot(series.xs, series.ys, label=name, linewidth=1.2,
                    marker="o" if panel.markers or len(series.xs) == 1 else None, markersize=3.5)
        if panel.xlabel.startswith("iteration") and 0 < len(marks) <= MAX_EPOCH_MARKS:
            for x in marks:
                ax.axvline(x, color="0.85", linewidth=0.8, zorder=0)
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_xlabel(panel.xlabel + (" (grey lines: epoch ends)" if panel.xlabel.startswith("iteration")
                                      and 0 < len(marks) <= MAX_EPOCH_MARKS else ""))
        ax.set_ylabel(panel.ylabel)
        if panel.xlabel == "epoch":
            epochs = sorted({x for series in panel.curves.values() for x in series.xs})
            if len(epochs) <= 12:
                ax.set_xticks(epochs)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if len(panel.curves) > 1 or panel.title == "accuracy":
            ax.legend(fontsize=8)
    figure.suptitle(title, fontsize=11)
    return figure


def save_atomic(figure: Any, out: Path) -> None:
    """Write the PNG to a temporary file beside ``out``, then rename it over ``out``."""
    atomic_write(out, lambda stream: figure.savefig(stream, format="png", dpi=110), durable=False)


def check_out(out: Path) -> None:
    """Refuse an output that is not a PNG path in an existing folder."""
    if out.suffix.lower() != ".png":
        raise SelfSupError(f"{out}: plot-log writes a PNG; give -o a path ending in .png")
    if out.is_dir():
        raise SelfSupError(f"{out}: is a folder; give -o a file path ending in .png")
    if not out.parent.is_dir():
        raise SelfSupError(f"{out}: the folder {out.parent} does not exist; create it or choose another -o path")


# -- command --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Read the log, draw the panels, write the PNG and print one line about it."""
    log_path, work_dir = resolve_log(args.work_dir)
    out = Path(args.out) if args.out else work_dir / DEFAULT_OUT
    check_out(out)
    log = read_log(log_path)
    if log.bad_lines:
        print(f"warning: {log_path}: skipped {log.bad_lines} malformed line(s) ({log.first_bad})", file=sys.stderr)
    panels, marks = build_panels(log.records)
    if not panels:
        modes = ", ".join(sorted({str(r.get('mode', 'train')) for r in log.records}))
        raise SelfSupError(f"{log_path}: no loss, lr or accuracy values to plot ({len(log.records)} records "
                           f"of mode {modes})")
    figure = draw(panels, marks, title=str(work_dir.resolve().name or work_dir))
    try:
        save_atomic(figure, out)
    except OSError as exc:
        raise SelfSupError(f"{out}: cannot write the PNG ({describe_exception(exc)})") from exc
    print(f"wrote {out}: {', '.join(_describe(p) for p in panels)}")
    return 0


def plot_run(work_dir: Path, out: Path | None = None) -> tuple[Path, str]:
    """Draw ``work_dir``'s curves to ``out`` (default ``work_dir/curves.png``); returns the path
    and what was drawn. Raises :class:`SelfSupError` when matplotlib is missing or there is
    nothing to plot. ``selfsup-run`` calls this after training (``[log_config] plot``)."""
    log_path = Path(work_dir) / METRICS_FILE
    out = out or Path(work_dir) / DEFAULT_OUT
    panels, marks = build_panels(read_log(log_path).records)
    if not panels:
        raise SelfSupError(f"{log_path}: no loss, lr or accuracy values to plot")
    save_atomic(draw(panels, marks, title=Path(work_dir).resolve().name), out)
    return out, ", ".join(_describe(p) for p in panels)


def _describe(panel: Panel) -> str:
    """``lr`` alone (its points are the loss's); the others with their counts."""
    return "lr" if panel.title == "learning rate" else panel.summary()
