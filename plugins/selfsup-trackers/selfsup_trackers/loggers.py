"""``WandbLogger`` and ``MLflowLogger``: every record the run writes to ``metrics.jsonl`` also
goes to an experiment tracker.

Both are trainer hooks configured in ``[[hooks]]``; the tracker library is imported when the
hook is built (a config without them never imports it), and a missing library is one config
error naming the ``pip install``. On the main process only, ``selfsup_before_run`` starts the
tracker's run (with the resolved config as its parameters) and wraps the run's
``logger.log_metrics`` so that each record is forwarded as it is written: numeric keys, named
``<mode>/<key>`` (``train/loss``, ``eval/knn_top1``, ``online_probe/online_linear_top1``), at
step ``iter``. ``selfsup_after_run`` ends the tracker's run as finished,
``selfsup_on_exception`` as failed.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable, Optional

#: keys of a metrics record that are bookkeeping, not metrics
BOOKKEEPING = frozenset({"mode", "time", "iter", "epoch"})


def _require(module: str, owner: str, extra: str) -> Any:
    """Import ``module`` or raise a ValueError (a config error at the hook's table) naming the install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"{owner}: needs the {module} package: pip install {module} "
                         f"(or pip install 'selfsup-trackers[{extra}]')") from exc


def metrics_of(record: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record as ``{"<mode>/<key>": value}``."""
    mode = record.get("mode", "train")
    return {f"{mode}/{key}": float(value) for key, value in record.items()
            if key not in BOOKKEEPING and isinstance(value, (int, float)) and not isinstance(value, bool)}


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"model.backbone.depth": 18, ...}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def default_tracking_uri(work_dir: Any) -> str:
    """Where MLflow stores a run by default, inside the work dir: ``sqlite:///<work dir>/mlflow.db``
    where SQLAlchemy is installed (MLflow 3's recommended store), else the file store
    ``file:<work dir>/mlruns`` (allowed with ``MLFLOW_ALLOW_FILE_STORE=true``, which newer MLflow
    asks for)."""
    import importlib.util
    import os
    from pathlib import Path

    folder = Path(work_dir).resolve()
    if importlib.util.find_spec("sqlalchemy") is not None:
        return f"sqlite:///{(folder / 'mlflow.db').as_posix()}"
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (folder / "mlruns").as_uri()


class _TrackerHook:
    """Forwards the run's metrics records to a tracker; subclasses start/log/end it."""

    def __init__(self) -> None:
        self._runner: Any = None
        self._original: Optional[Callable[..., Any]] = None

    def selfsup_before_run(self, runner: Any) -> None:
        logger = getattr(runner, "logger", None)
        if logger is None or not getattr(logger, "enabled", True):
            return  # not the main process: one tracker run per training run
        self.start(runner)
        self._runner = runner
        original = logger.log_metrics
        self._original = original

        def log_metrics(record: dict[str, Any], step: Optional[int] = None) -> None:
            original(record, step=step)
            values = metrics_of(record)
            if values:
                self.log(values, int(record.get("iter", step or 0)))

        logger.log_metrics = log_metrics

    def _restore(self) -> None:
        if self._runner is not None and self._original is not None:
            self._runner.logger.log_metrics = self._original
        self._runner, self._original = None, None

    def selfsup_after_run(self, runner: Any) -> None:
        if self._runner is not None:
            self._restore()
            self.end(failed=False)

    def selfsup_on_exception(self, runner: Any, exception: BaseException) -> None:
        if self._runner is not None:
            self._restore()
            self.end(failed=True)

    # subclasses
    def start(self, runner: Any) -> None:
        raise NotImplementedError

    def log(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def end(self, failed: bool) -> None:
        raise NotImplementedError


class WandbLogger(_TrackerHook):
    """Log the run to Weights & Biases.

    Args:
        project: the W&B project (default: W&B's own default).
        name: the run's name (default: the work dir's name).
        entity: the W&B team or user.
        mode: ``"online"``, ``"offline"`` (files under the work dir, ``wandb sync`` later) or
            ``"disabled"``; default: W&B's own (``WANDB_MODE``).
        tags: tags of the run.
    """

    def __init__(self, project: Optional[str] = None, name: Optional[str] = None, entity: Optional[str] = None,
                 mode: Optional[str] = None, tags: Optional[list[str]] = None) -> None:
        super().__init__()
        if mode not in (None, "online", "offline", "disabled"):
            raise ValueError(f"WandbLogger: mode must be \"online\", \"offline\" or \"disabled\", got {mode!r}")
        self.wandb = _require("wandb", "WandbLogger", "wandb")
        self.project, self.name, self.entity, self.mode, self.tags = project, name, entity, mode, tags
        self.run: Any = None

    def start(self, runner: Any) -> None:
        self.run = self.wandb.init(project=self.project, name=self.name or runner.work_dir.name, entity=self.entity,
                                   mode=self.mode, tags=self.tags, dir=str(runner.work_dir),
                                   config=flatten(runner.config.data), reinit=True)

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def end(self, failed: bool) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


class MLflowLogger(_TrackerHook):
    """Log the run to MLflow.

    Args:
        experiment: the MLflow experiment name (created if missing; default: MLflow's default).
        tracking_uri: where MLflow stores runs (default: in the work dir, offline:
            ``sqlite:///<work dir>/mlflow.db`` with SQLAlchemy installed, else ``file:<work dir>/mlruns``).
        run_name: the run's name (default: the work dir's name).
        tags: string tags of the run.
    """

    def __init__(self, experiment: Optional[str] = None, tracking_uri: Optional[str] = None,
                 run_name: Optional[str] = None, tags: Optional[dict[str, str]] = None) -> None:
        super().__init__()
        self.mlflow = _require("mlflow", "MLflowLogger", "mlflow")
        self.experiment, self.tracking_uri, self.run_name, self.tags = experiment, tracking_uri, run_name, tags
        self.active = False

    def start(self, runner: Any) -> None:
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.tracking_uri or default_tracking_uri(runner.work_dir))
        if self.experiment:
            mlflow.set_experiment(self.experiment)
        mlflow.start_run(run_name=self.run_name or runner.work_dir.name, tags=self.tags)
        self.active = True
        params = {k: str(v)[:500] for k, v in flatten(runner.config.data).items()}
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per call
            mlflow.log_params(dict(list(params.items())[start:start + 100]))

    def log(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def end(self, failed: bool) -> None:
        if self.active:
            self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
            self.active = False


__all__ = ["MLflowLogger", "WandbLogger", "default_tracking_uri", "flatten", "metrics_of"]
