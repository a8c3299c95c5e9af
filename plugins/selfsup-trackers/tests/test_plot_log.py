"""``selfsup-run plot-log`` (contributed by selfsup-trackers) and the curves drawn at the end of a
run: real files, and a real subprocess for the exit status and the one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from selfsup_core import cli

ROOT = Path(__file__).resolve().parents[3]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selfsup_core.cli", *argv], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


# -- plot-log -------------------------------------------------------------------------------
def _train(epoch: int, it: int, loss: float, **extra: float) -> dict:
    return {"time": 1.0 + it, "mode": "train", "epoch": epoch, "iter": it, "loss": loss, "loss_a": loss * 0.6,
            "loss_b": loss * 0.4, "lr": 0.1 * it / 40, "images_per_s": 100.0, **extra}


def write_log(work_dir: Path, malformed: bool = True) -> Path:
    """Two epochs of 20 iterations logged every 5, an eval after each; the run dies in epoch
    2 and resumes from the epoch-1 checkpoint, so iterations 25 and 30 appear twice."""
    records: list[dict | str] = []
    for it in range(5, 21, 5):
        records.append(_train(1, it, 5.0 - it / 10))
    records.append({"time": 30.0, "mode": "train_epoch", "epoch": 1, "iter": 20, "loss": 4.0, "lr": 0.05})
    records.append({"time": 31.0, "mode": "eval", "epoch": 1, "iter": 20, "knn_top1": 0.5, "knn_top5": 0.9,
                    "best_knn_top1": 0.5, "eval_seconds": 1.0})
    records += [_train(2, 25, 99.0), _train(2, 30, 99.0)]  # the crashed attempt
    if malformed:
        records.append('{"time": 40.0, "mode": "train", "ep')  # cut off by the crash
    for it in range(25, 41, 5):
        records.append(_train(2, it, 4.0 - it / 20))
    records.append({"time": 60.0, "mode": "train_epoch", "epoch": 2, "iter": 40, "loss": 2.5, "lr": 0.1})
    records.append({"time": 61.0, "mode": "clustering", "epoch": 2, "iter": 40, "min_cluster": 3})
    records.append({"time": 62.0, "mode": "eval", "epoch": 2, "iter": 40, "knn_top1": 0.6, "knn_top5": 0.95,
                    "best_knn_top1": 0.6, "linear_top1": 0.55, "eval_seconds": 1.0})
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / "metrics.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_plot_log_writes_a_png_and_says_what_it_plotted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup_trackers import plot_log

    log = write_log(tmp_path / "run")
    assert cli.main(["plot-log", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    png = tmp_path / "run" / "curves.png"
    assert out.strip() == (f"wrote {png}: loss/loss_a/loss_b (8 points), lr, "
                           "knn_top1/knn_top5/linear_top1 (2 evals)")
    assert "skipped 1 malformed line(s) (line 9: not JSON" in err and str(log) in err
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).ndim == 3
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp left

    panels, marks = plot_log.build_panels(plot_log.read_log(log).records)
    loss = panels[0].curves["loss"]
    assert loss.xs == [5, 10, 15, 20, 25, 30, 35, 40] and 99.0 not in loss.ys  # the resumed run wins
    assert marks == [20, 40]


def test_plot_log_takes_the_jsonl_and_an_output_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "run", malformed=False)
    out = tmp_path / "plots" / "x.png"
    out.parent.mkdir()
    assert cli.main(["plot-log", str(log), "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "run" / "curves.png").exists()


def test_plot_log_per_epoch_log_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log interval longer than an epoch leaves only epoch means: those are plotted."""
    work = tmp_path / "run"
    work.mkdir()
    lines = [{"mode": "train_epoch", "epoch": e, "iter": 10 * e, "loss": 3.0 / e, "lr": 0.1} for e in (1, 2, 3)]
    (work / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    assert cli.main(["plot-log", str(work)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {work / 'curves.png'}: loss (3 points), lr"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such work dir or metrics file"),
        ("", "the metrics log is empty"),
        ("\n  \n", "the metrics log is empty"),
        ("not json\n[1, 2]\n", "metrics.jsonl: line 1: not JSON"),
        ('{"mode": "clustering", "epoch": 1, "min_cluster": 3}\n', "no loss, lr or accuracy values to plot"),
    ],
)
def test_plot_log_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None,
                         expected: str) -> None:
    work = tmp_path / "run"
    if content is not None:
        work.mkdir()
        (work / "metrics.jsonl").write_text(content)
    assert cli.main(["plot-log", str(work)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {work}") and expected in err
    assert not (work / "curves.png").exists()


def test_plot_log_refuses_outputs_other_than_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = write_log(tmp_path / "run")
    before = log.read_bytes()
    assert cli.main(["plot-log", str(tmp_path / "run"), "-o", str(log)]) == 2
    assert "give -o a path ending in .png" in capsys.readouterr().err
    assert log.read_bytes() == before
    assert cli.main(["plot-log", str(tmp_path / "run"), "-o", str(tmp_path / "missing" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_plot_log_subprocess_missing_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_run"
    result = run_cli("plot-log", str(missing))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {missing}: no such work dir or metrics file; pass a run's work dir or its metrics.jsonl"]


def test_plot_modules_import_neither_torch_nor_matplotlib() -> None:
    code = ("import selfsup_trackers.plot_log, selfsup_trackers.commands, sys; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_end_of_run_hook_draws_the_curves_or_says_why_not(tmp_path: Path) -> None:
    from selfsup_core.api import Config
    from selfsup_trackers.commands import selfsup_after_training

    write_log(tmp_path / "run", malformed=False)
    rows = selfsup_after_training(Config({}, "x.toml"), tmp_path / "run", {})
    assert rows == [("curves", str(tmp_path / "run" / "curves.png"))]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == PNG_SIGNATURE
    off = Config({"log_config": {"plot": False}}, "x.toml")
    assert selfsup_after_training(off, tmp_path / "run", {}) == [("curves", "not drawn: [log_config] plot = false")]
    assert selfsup_after_training(Config({}, "x.toml"), tmp_path / "empty", {})[0][1].startswith("not drawn: ")
