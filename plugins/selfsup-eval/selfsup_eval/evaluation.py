"""Evaluating learned features: the ``[evaluation]`` table, the context evaluators receive,
``selfsup-run eval`` and online monitoring during pre-training (moved here from the core:
the core knows ``[evaluation]`` only because :mod:`selfsup_eval.plugin` declares it).

Evaluators are components of the ``selfsup.evaluators`` registry (this plugin ships
``KNN``, ``LinearProbe``, ``FineTune`` and ``TSNE``). An evaluator is any object with::

    def evaluate(self, context: EvalContext) -> dict[str, Any]

returning named results: accuracies as fractions in [0, 1] with keys prefixed by the
evaluator (``{"knn_top1": 0.85, "knn_top5": 0.99}``), paths of files it wrote as strings.

The table (every key optional; ``train``/``test`` are dataset tables)::

    [evaluation]
    interval = 10          # during pre-training, run the online evaluator every 10 epochs
    initial = false        # ... and once before the first epoch
    online = "KNN"         # which of the evaluators runs online
    samples_per_gpu = 256  # extraction batch size per process
    workers_per_gpu = 2
    [evaluation.train]     # the kNN bank / the linear probe's training set (train split)
    [evaluation.test]      # the images that are scored (test split)
    [[evaluation.evaluators]]
    type = "KNN"           # default when no evaluators are listed
    k = 200
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Union

import attrs
import torch
from torch import nn

from selfsup_core.api import (
    Builder, Config, ConfigError, Problem, SelfSupError, check_table, describe_exception, did_you_mean, format_results,
)
from selfsup_core.api import registry as _registry
from selfsup_core.api import session as _session

SECTION = "evaluation"
SPLITS = ("train", "test")
KeyPath = tuple[Union[str, int], ...]
DEFAULT_EVALUATORS: tuple[dict[str, Any], ...] = ({"type": "KNN"},)


@attrs.define
class EvalSettings:
    """The scalar keys of ``[evaluation]``."""

    interval: int = 0
    initial: bool = False
    online: str = "KNN"
    samples_per_gpu: int = 256
    workers_per_gpu: int = 2
    min_loaded_share: float = 1.0


def _share(value: Any) -> str | None:
    return None if 0 <= value <= 1 and not isinstance(value, bool) else f"must be between 0 and 1, got {value!r}"


def positive(value: Any) -> str | None:
    return None if value >= 1 else f"must be >= 1, got {value!r}"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


INT, BOOL = (int,), (bool,)
#: key -> (attribute, accepted python types, check(value) -> error text or None), as
#: selfsup_core.api.check_table reads them
_SCHEMA: dict[str, tuple[str, tuple[type, ...], Any]] = {
    "interval": ("interval", INT, non_negative),
    "initial": ("initial", BOOL, None),
    "online": ("online", (str,), None),
    "samples_per_gpu": ("samples_per_gpu", INT, positive),
    "workers_per_gpu": ("workers_per_gpu", INT, non_negative),
    "min_loaded_share": ("min_loaded_share", (int, float), _share),
}
_TABLES = ("train", "test", "evaluators")


def read_eval_settings(config: Config) -> EvalSettings:
    """The :class:`EvalSettings` of ``config`` (defaults when it has no ``[evaluation]``);
    one ConfigError lists every problem."""
    table = config.data.get(SECTION, {})
    if not isinstance(table, Mapping):
        raise ConfigError(config.problem((SECTION,), f"must be a table, got {type(table).__name__}"))
    problems: list[Problem] = []
    values = check_table(config, SECTION, table, _SCHEMA, problems, passthrough=_TABLES)
    for split in SPLITS:
        if split in table and not (isinstance(table[split], Mapping) and "type" in table[split]):
            problems.append(config.problem((SECTION, split), "must be a dataset table with a type, "
                                                             "e.g. {type = 'OneViewDataset', ...}"))
    evaluators = table.get("evaluators", [])
    if not isinstance(evaluators, list) or not all(isinstance(e, Mapping) and "type" in e for e in evaluators):
        problems.append(config.problem((SECTION, "evaluators"), "must be a list of tables with a type, "
                                                                "e.g. [[evaluation.evaluators]] type = 'KNN'"))
    if problems:
        raise ConfigError(problems)
    return EvalSettings(**values)


def evaluator_tables(config: Config) -> list[tuple[KeyPath, dict[str, Any]]]:
    """``(key path, table)`` of every configured evaluator; ``[{type = "KNN"}]`` when none are."""
    tables = config.data.get(SECTION, {}).get("evaluators") or []
    if not tables:
        return [((SECTION, "evaluators", i), dict(t)) for i, t in enumerate(DEFAULT_EVALUATORS)]
    return [((SECTION, "evaluators", i), t) for i, t in enumerate(tables)]


def select_evaluators(
    config: Config, names: Sequence[str] | None, registries: _registry.Registries | None = None
) -> list[tuple[KeyPath, dict[str, Any]]]:
    """The evaluator tables ``names`` ask for (``knn``, ``linear``, ``LinearProbe``, ``tsne``).

    A name matches an evaluator type ignoring case, as the whole type or its start
    (``linear`` -> ``LinearProbe``). Configured evaluators are searched first, so that
    their arguments apply; then the installed ones, built with their defaults. ``None``:
    every configured evaluator.
    """
    configured = evaluator_tables(config)
    if not names:
        return configured
    registries = registries if registries is not None else _session.registries()
    installed = registries["evaluators"].list()
    chosen = []
    for name in names:
        wanted = name.lower()

        def matches(type_name: str) -> bool:
            bare = type_name.rpartition(":")[2].lower()
            return bare == wanted or bare.startswith(wanted)

        found = [entry for entry in configured if matches(str(entry[1]["type"]))]
        if not found:
            found = [((SECTION, "evaluators", name), {"type": t}) for t in installed if matches(t)][:1]
        if not found:
            raise SelfSupError(
                f"--evaluator {name}: no installed evaluator matches{did_you_mean(name, installed)}; installed: "
                f"{', '.join(installed) or 'none (pip install selfsup-eval)'}")
        chosen.extend(found)
    return chosen


@attrs.define(eq=False)
class EvalContext:
    """What an evaluator receives: the model, the evaluation datasets and the run's devices.

    Attributes:
        model: the algorithm (unwrapped: no DDP). Evaluators put it in eval mode while they
            use it (:meth:`eval_mode`) and leave its training state as they found it.
        device, autocast_dtype, channels_last: as the trainer uses them.
        samples_per_gpu, workers_per_gpu: batch size and loader workers per process.
        seed: seeds data order and anything random an evaluator does.
        rank, world_size: this process in a torchrun job (0, 1 otherwise). Evaluators run on
            every process; each extracts its shard and the results are gathered.
        work_dir: where evaluators write files (plots); ``tag`` names them (``"epoch_10"``).
        epoch: the training epoch being evaluated (1-based; 0 before training; None unknown).
        cache: shared by the evaluators of one evaluation, e.g. extracted features, so that
            kNN and a linear probe extract them once.
        message: prints a line for the user (main process only).
    """

    model: nn.Module
    datasets: Mapping[str, Callable[[], Any]]
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    samples_per_gpu: int = 256
    workers_per_gpu: int = 2
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    work_dir: Path = attrs.field(factory=Path, converter=Path)
    tag: str = "eval"
    epoch: int | None = None
    cache: dict[Any, Any] = attrs.field(factory=dict)
    message: Callable[[str], None] = attrs.field(default=None)
    config: Config | None = None

    def __attrs_post_init__(self) -> None:
        if self.message is None:
            self.message = self._print

    def _print(self, text: str) -> None:
        if self.rank == 0:
            print(text, file=sys.stderr, flush=True)

    def dataset(self, split: str) -> Any:
        """The ``[evaluation.<split>]`` dataset (``"train"`` or ``"test"``), built once."""
        key = ("dataset", split)
        if key not in self.cache:
            factory = self.datasets.get(split)
            if factory is None:
                where = f"{self.config.filename}: " if self.config is not None else ""
                raise ConfigError(
                    f"{where}evaluation.{split}: missing; this evaluator needs an [evaluation.{split}] dataset table "
                    f"(e.g. type = 'OneViewDataset' over the {split} split, without random augmentation)")
            self.cache[key] = factory()
        return self.cache[key]

    def autocast(self) -> Any:
        """The autocast context of the run (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @contextmanager
    def eval_mode(self) -> Iterator[nn.Module]:
        """The model in eval mode, with its previous training flags restored afterwards."""
        flags = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            yield self.model
        finally:
            for module, training in flags.items():
                module.training = training


def dataset_factories(config: Config, builder: Builder) -> dict[str, Callable[[], Any]]:
    """Lazy builders of the ``[evaluation]`` datasets that the config has."""
    table = config.data.get(SECTION, {})
    factories: dict[str, Callable[[], Any]] = {}
    for split in SPLITS:
        if split in table:
            factories[split] = (lambda s=split: builder.build(table[s], "datasets", (SECTION, s)))
    return factories


def build_evaluators(config: Config, chosen: Sequence[tuple[KeyPath, dict[str, Any]]], builder: Builder) -> list[tuple[str, Any]]:
    """``(type name, evaluator)`` for each chosen table."""
    planned = [(str(table["type"]), builder.plan(table, "evaluators", path)) for path, table in chosen]
    builder.raise_problems()
    return [(name, builder.construct(plan)) for name, plan in planned]


def run_evaluators(evaluators: Sequence[tuple[str, Any]], context: EvalContext, source: str | None = None
                   ) -> dict[str, Any]:
    """Run each evaluator with ``context`` (RNG state kept outside); merged results.

    An evaluator states what is wrong with its input (too few images for its batch, no
    labels, ...) by raising ``ValueError``; with ``source`` (the config's file name) that
    becomes one :class:`SelfSupError` line naming the file and the evaluator."""
    results: dict[str, Any] = {}
    devices = [context.device] if context.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(context.seed)
        for name, evaluator in evaluators:
            evaluate = getattr(evaluator, "evaluate", None)
            if not callable(evaluate):
                raise SelfSupError(f"evaluator {name} has no evaluate(context) method")
            try:
                output = evaluate(context)
            except ValueError as exc:
                if source is None:
                    raise
                text = str(exc).removeprefix(f"{name}: ")
                raise SelfSupError(f"{source}: [[evaluation.evaluators]] {name}: {text}") from exc
            if not isinstance(output, Mapping):
                raise SelfSupError(f"{name}.evaluate must return a dict of results, got {type(output).__name__}")
            results.update(output)
    return results


def primary_metric(results: Mapping[str, Any]) -> str | None:
    """The key tracked as "best" during training: the first ``*top1`` result."""
    return next((k for k, v in results.items() if k.endswith("top1") and isinstance(v, (int, float))), None)


# -- online monitoring ---------------------------------------------------------------------
class OnlineEvaluation:
    """A trainer hook that runs the ``online`` evaluator every ``interval`` epochs (and after
    the last epoch), logs its results with the other metrics (``mode = "eval"`` records in
    metrics.jsonl) and tracks the best value of its first ``*top1`` result across resumes.

    Its datasets are built before the first epoch, so a config error stops the run before
    any training. An evaluator that fails later is reported (an ``error`` record and a
    message) and switched off; training goes on and its checkpoints are written."""

    def __init__(self, settings: EvalSettings, evaluators: Sequence[tuple[str, Any]],
                 datasets: Mapping[str, Callable[[], Any]]) -> None:
        self.settings = settings
        self.evaluators = list(evaluators)
        self.datasets = datasets
        self.best: dict[str, float] = {}
        self.failed = False

    def selfsup_before_run(self, runner: Any) -> None:
        # build the datasets now: a config error shows before the first epoch, not after it
        self.datasets = {split: (lambda built=factory(): built) for split, factory in self.datasets.items()}
        if self.settings.initial and runner.iter == 0:
            self._evaluate(runner, epoch=0)

    def selfsup_after_epoch(self, runner: Any) -> None:
        done = runner.epoch + 1
        if done % self.settings.interval == 0 or done == runner.max_epochs:
            self._evaluate(runner, epoch=done)

    def _evaluate(self, runner: Any, epoch: int) -> None:
        """Run the evaluator; a failure is reported and ends online evaluation, not the
        training run (the epoch's checkpoint is still written)."""
        if self.failed:
            return
        try:
            self._run(runner, epoch)
        except Exception as exc:  # noqa: BLE001 - the training run must not be lost to a monitor
            self.failed = True
            text = describe_exception(exc).splitlines()[0]
            runner.log_metrics({"mode": "eval", "epoch": epoch, "error": text})
            runner.logger.message(f"error: evaluation after epoch {epoch} failed ({text}); training goes on without "
                                  "online evaluation; fix [evaluation] and check it with selfsup-run eval")

    def _run(self, runner: Any, epoch: int) -> None:
        start = time.perf_counter()
        context = EvalContext(
            model=runner.model,
            datasets=self.datasets,
            device=runner.device,
            autocast_dtype=runner.autocast_dtype,
            channels_last=runner.channels_last,
            samples_per_gpu=self.settings.samples_per_gpu,
            workers_per_gpu=self.settings.workers_per_gpu,
            seed=runner.settings.seed,
            rank=runner.rank,
            world_size=runner.world_size,
            work_dir=runner.work_dir,
            tag=f"epoch_{epoch}",
            epoch=epoch,
            message=runner.logger.message,
            config=runner.config,
        )
        results = run_evaluators(self.evaluators, context)
        record = dict(results)
        key = primary_metric(results)
        if key is not None:
            best_key = f"best_{key}"
            self.best[best_key] = max(self.best.get(best_key, float("-inf")), float(results[key]))
            record[best_key] = self.best[best_key]
        seconds = time.perf_counter() - start
        runner.log_metrics({"mode": "eval", "epoch": epoch, **record, "eval_seconds": round(seconds, 2)})
        runner.logger.message(f"evaluation after epoch {epoch}: {format_results(record)} ({seconds:.1f} s)")

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state.get("best", {}))


def build_online_evaluation(config: Config, builder: Builder) -> OnlineEvaluation | None:
    """The online evaluation hook when ``[evaluation] interval`` > 0, else None."""
    settings = read_eval_settings(config)
    if settings.interval <= 0:
        return None
    chosen = select_evaluators(config, [settings.online], builder.registries)[:1]
    evaluators = build_evaluators(config, chosen, builder)
    missing = [s for s in SPLITS if s not in config.data[SECTION]]
    if missing:
        raise ConfigError([config.problem((SECTION, s), "missing; online evaluation needs [evaluation.train] (the bank) "
                                                        "and [evaluation.test] dataset tables") for s in missing])
    return OnlineEvaluation(settings, evaluators, dataset_factories(config, builder))


# -- selfsup-run eval ----------------------------------------------------------------------
def evaluate_checkpoint(
    config: Config,
    *,
    checkpoint: str | None,
    evaluators: Sequence[str] | None = None,
    work_dir: str | None = None,
    out: str | None = None,
    device: str | None = None,
    registries: _registry.Registries | None = None,
) -> dict[str, Any]:
    """Build the config's model, load ``checkpoint`` into it and run the chosen evaluators.

    Prints the results and writes them as JSON to ``out`` (default:
    ``<work dir>/eval/<checkpoint stem>_<evaluators>.json``); returns the JSON record.
    Works under torchrun: every process extracts its shard, the main process writes.
    """
    from selfsup_core.api import (
        device_type_of, dist, load_weights, resolve_device, resolve_precision, revert_sync_batchnorm, use_channels_last,
        validate,
    )

    settings = read_eval_settings(config)
    registries = registries if registries is not None else _session.registries()
    runner = config.data.get("runner", {}) if isinstance(config.data.get("runner"), Mapping) else {}
    wanted = device or runner.get("device", "auto")
    info = dist.init_from_env(device_type_of(wanted))
    torch_device = resolve_device(wanted, info.local_rank)
    if torch_device.type == "cuda":
        torch.cuda.set_device(torch_device)
    autocast_dtype = resolve_precision(runner.get("precision", "auto"), torch_device)

    validate(config, registries)
    builder = Builder(config, registries)
    chosen = select_evaluators(config, evaluators, registries)
    built = build_evaluators(config, chosen, builder)
    model = builder.build(config.data["model"], "algorithms", ("model",))
    meta: dict[str, Any] = {}
    from .loaded_weights import check_loaded_share, weights_read

    if checkpoint is None:  # a --checkpoint replaces every tensor (strictly) anyway
        for line in check_loaded_share(config, model, float(settings.min_loaded_share)):
            print(line, file=sys.stderr)
    read = ([str(checkpoint)] if checkpoint is not None else []) + weights_read(model)
    if checkpoint is not None:
        meta = load_weights(model, checkpoint)
    model = revert_sync_batchnorm(model).to(torch_device)
    channels_last = use_channels_last(runner.get("channels_last", "auto"), torch_device, model)
    if channels_last:
        model.to(memory_format=torch.channels_last)

    ckpt_path = Path(checkpoint) if checkpoint else None
    base = Path(work_dir) if work_dir else (ckpt_path.parent if ckpt_path else Path("work_dirs") / Path(config.filename).stem)
    tag = ckpt_path.stem if ckpt_path else "init"
    context = EvalContext(
        model=model,
        datasets=dataset_factories(config, builder),
        device=torch_device,
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
        samples_per_gpu=settings.samples_per_gpu,
        workers_per_gpu=settings.workers_per_gpu,
        seed=int(config.data.get("seed", 0)),
        rank=info.rank,
        world_size=info.world_size,
        work_dir=base,
        tag=tag,
        epoch=meta.get("epoch"),
        config=config,
    )
    if info.is_main:
        base.mkdir(parents=True, exist_ok=True)
        where = f"{checkpoint} (epoch {meta['epoch']})" if "epoch" in meta else (checkpoint or "the model as initialised")
        context.message(f"evaluating {where} with {', '.join(n for n, _ in built)} on {torch_device}")
    start = time.perf_counter()
    results = run_evaluators(built, context, source=config.filename)
    record = {
        "config": str(config.filename),
        "checkpoint": read[0] if read else None,
        "weights_read": read,
        "epoch": meta.get("epoch"),
        "evaluators": [table for _, table in chosen],
        "results": results,
        "device": str(torch_device),
        "world_size": info.world_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    if info.is_main:
        target = Path(out) if out else base / "eval" / f"{tag}_{'_'.join(n.rpartition(':')[2].lower() for n, _ in built)}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(target)
        record["output"] = str(target)
    dist.barrier()
    return record


__all__ = [
    "SECTION",
    "SPLITS",
    "EvalContext",
    "EvalSettings",
    "OnlineEvaluation",
    "build_evaluators",
    "build_online_evaluation",
    "dataset_factories",
    "evaluate_checkpoint",
    "evaluator_tables",
    "format_results",
    "primary_metric",
    "read_eval_settings",
    "run_evaluators",
    "select_evaluators",
]
