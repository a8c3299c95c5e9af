"""``selfsup-run``: train from a config, list components, show a resolved config.

``--help`` and ``list`` import neither torch nor any component module. Every error meant
for the user ends the command with one line per problem and exit status 2; ``--debug`` (or
``SELFSUP_DEBUG=1``) shows the traceback instead. A config whose ``type`` is a dotted import
path is refused before anything is imported unless the command has ``--allow-import-paths``
(see :mod:`selfsup_core.import_paths`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from . import registry as _registry
from . import session as _session
from .errors import SelfSupError, describe_exception, unwrap_worker_message

EXIT_USAGE = 2

_DESCRIPTION = """\
selfsup: self-supervised pre-training of vision backbones, composed from TOML configs.

  selfsup-run CONFIG [--cfg-options KEY=VALUE ...] [--work-dir DIR] [--resume [CKPT|auto]]
                     [--device DEV] [--seed N] [--deterministic] [--check]
  torchrun --nproc_per_node=G -m selfsup_core.cli CONFIG ...   (distributed)
  selfsup-run eval CONFIG [--checkpoint CKPT] [--evaluator knn|linear|NAME ...] [--out FILE]
  selfsup-run tsne CONFIG [--checkpoint CKPT] [--out FILE]
  selfsup-run list [KIND [PATTERN]] [--verbose] [--json] [--args NAME]   (KIND configs: the packaged configs)
  selfsup-run show NAME [--kind KIND] [--json]     (a component's arguments, types, defaults, docs)
  selfsup-run show-config CONFIG [--cfg-options KEY=VALUE ...]
  selfsup-run export CKPT OUT [--format pth|safetensors] [--to raw|torchvision|timm] [--prefix P]
  selfsup-run export-hub CKPT|WORK_DIR OUT_DIR [--input-size S] [--force]   (torch.export, safetensors, model card)
  selfsup-run import-weights WEIGHTS OUT [--from auto|torchvision|timm|mmcls] [--format pth|safetensors]
  selfsup-run plot-log WORK_DIR [-o OUT.png]
  selfsup-run count-params CONFIG [--cfg-options KEY=VALUE ...] [--depth N] [--json]
"""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="a TOML config file")
    parser.add_argument(
        "--cfg-options",
        "--set",
        dest="cfg_options",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="override config keys, e.g. model.backbone.depth=18 optimizer.lr=0.3 (values are TOML)",
    )
    add_import_path_argument(parser)


def add_import_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-import-paths",
        action="store_true",
        help="let the config's 'type' be a dotted import path 'package.module:Class' (imports that module; "
             "only classes of the expected kind are built). Without it a config can only name installed components",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup-run", description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"selfsup-core {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train from CONFIG (the default command: 'selfsup-run CONFIG')")
    add_config_arguments(train)
    train.add_argument("--work-dir", metavar="DIR", help="where checkpoints and logs go")
    train.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CKPT",
        help="continue a run: from CKPT, or (no value / 'auto') from the work dir's latest checkpoint",
    )
    train.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N (default: the config's, else auto)")
    train.add_argument("--seed", type=int, metavar="N", help="random seed (default: the config's, else 0)")
    train.add_argument(
        "--deterministic", action="store_true", default=None, help="deterministic algorithms (bitwise reproducible)"
    )
    train.add_argument("--check", action="store_true",
                       help="validate the config and build the model (and, when its files are here, the training data "
                            "with one dry batch), then stop")
    train.add_argument("--no-dry-run", action="store_true",
                       help="with --check: build the training data but run no batch through the model")
    train.add_argument("--resume-with-changes", action="store_true",
                       help="with --resume: apply a changed CONFIG or new --cfg-options to the run (printed as a diff; "
                            "the old config is kept as WORK_DIR/config.prev.toml). Without it --resume uses the run's "
                            "saved WORK_DIR/config.toml and refuses changes")

    listing = commands.add_parser("list", help="list installed components and broken plugins")
    listing.add_argument("kind", nargs="?", metavar="KIND",
                         help=f"one of: {', '.join(_registry.KINDS)}, or configs (the packaged configs)")
    listing.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="names to show, e.g. 'Res*'")
    listing.add_argument("--verbose", "-v", action="store_true", help="also import each component to check it")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument("--args", metavar="NAME", help="show component NAME's arguments instead (as 'show NAME')")

    show = commands.add_parser("show-config", help="print the fully resolved config as TOML")
    add_config_arguments(show)
    _add_show_parser(commands)
    # commands of installed plugins (selfsup-migrate's ``migrate``, ...): each sets
    # ``selfsup_run`` on its parser, the function that runs it
    _session.plugin_manager().hook.selfsup_register_commands(commands=commands)
    parser.set_defaults(command_names=tuple(commands.choices))
    return parser


def _add_show_parser(commands: Any) -> None:
    """``show``, the core's one introspection command (the other tools come from plugins through
    the ``selfsup_register_commands`` hook: export, import-weights, export-hub and count-params
    from selfsup-models, plot-log from selfsup-trackers, eval and tsne from selfsup-eval)."""
    show = commands.add_parser("show", help="a component's arguments with types, defaults and docs")
    show.add_argument("name", metavar="NAME", help="a component name (a config's type), e.g. ResNet or selfsup-models:ResNet")
    show.add_argument("--kind", metavar="KIND", help=f"only this kind: {', '.join(_registry.KINDS)}")
    show.add_argument("--json", action="store_true", help="print JSON")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if a != "--debug"), None)
    parser = make_parser()
    if first is not None and not first.startswith("-") and first not in parser.get_default("command_names"):
        args_list.insert(args_list.index(first), "train")
    args = parser.parse_args(args_list)
    debug = args.debug or os.environ.get("SELFSUP_DEBUG", "") not in ("", "0")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    handlers = {"train": _train, "list": _list, "show-config": _show_config, "show": _show}
    handler = handlers.get(args.command) or getattr(args, "selfsup_run", None)
    if handler is None:  # a plugin's sub-parser that forgot set_defaults(selfsup_run=...)
        print(f"error: command {args.command!r} (from a plugin) does not say what runs it: its parser must "
              "set_defaults(selfsup_run=FUNCTION)", file=sys.stderr)
        return EXIT_USAGE
    from .import_paths import allowing

    try:
        finished = False
        try:
            # only ever switches the opt-in on: a nested main() (migrate --check) inherits it
            with allowing() if getattr(args, "allow_import_paths", False) else contextlib.nullcontext():
                result = handler(args)
            finished = True
            return result
        finally:
            _leave_process_group(wait=finished)
    except SelfSupError as exc:
        if debug:
            raise
        text = unwrap_worker_message(str(exc)) or str(exc)  # raised in a DataLoader worker: its own message
        for line in text.splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _leave_process_group(wait: bool) -> None:
    """Destroy the torch.distributed group a torchrun job set up (NCCL warns otherwise);
    ``wait``: after a normal end, wait for every process first."""
    dist = sys.modules.get("selfsup_core.engine.dist")  # imported only by commands that use torch
    if dist is not None:
        dist.destroy(wait=wait)


# -- commands -----------------------------------------------------------------------------
def load_command_config(args: argparse.Namespace, path: str | None = None,
                        overrides: Sequence[str] | None = None) -> Any:
    """``args.config`` with ``args.cfg_options`` applied (or ``path`` with ``overrides``), after
    the plugins' ``selfsup_process_config`` hooks: the config every command that takes one works on."""
    from .config import load_config

    config = load_config(path if path is not None else args.config,
                         args.cfg_options if overrides is None else overrides)
    _session.current().prepare(config)
    _refuse_import_paths(config)
    if getattr(args, "device", None) is not None:  # checked like [runner] device, before any torch call
        from .engine.settings import check_device

        check_device(args.device, "--device")
    return config


def _refuse_import_paths(config: Any) -> None:
    """Unless ``--allow-import-paths`` was given: one problem per ``type`` that is a dotted
    import path, found by reading the config (nothing is imported)."""
    from . import import_paths
    from .errors import ConfigError

    if import_paths.allowed():
        return
    found = import_paths.find_in_config(config.data)
    if found:
        raise ConfigError([config.problem(path, import_paths.refusal(type_name, _kind_of(path)))
                           for path, type_name in found])


def _kind_of(path: tuple[Any, ...]) -> str | None:
    from .build import kind_for_key

    keys = [k for k in path[:-1] if isinstance(k, str)]
    return kind_for_key(keys[-1]) if keys else None


def _show(args: argparse.Namespace) -> int:
    from .describe import run as show

    return show(args)


def _train(args: argparse.Namespace) -> int:
    from .build import build_model
    from .resume_config import resolve_for_resume

    config, resolved_work_dir = resolve_for_resume(
        args, lambda path, overrides: load_command_config(args, path, overrides),
        lambda c: Path(c.data.get("work_dir") or Path("work_dirs") / Path(c.filename).stem))
    from .engine.dry_run import check_data, preflight

    preflight(config)  # every problem of the config in one round, before anything is built
    if not args.check:
        from .engine.trainer import Trainer

        result = Trainer(
            config,
            work_dir=resolved_work_dir or args.work_dir,
            resume=args.resume,
            device=args.device,
            deterministic=args.deterministic,
            seed=args.seed,
        ).run()
        if result["rank"] == 0:  # one summary (and one plot) per run, not one per process
            rows = _session.plugin_manager().hook.selfsup_after_training(
                config=config, work_dir=Path(result["work_dir"]), result=result)
            summary = run_summary(result, rows=[row for found in rows for row in found or ()])
            print(summary)
            from .engine.runlog import append_to_run_log

            append_to_run_log(result["work_dir"], summary)
        return 0
    model = build_model(config)  # validated by preflight()
    if "runner" in config.data or "data" in config.data:
        _check_trainer_sections(config, model)
    line = f"{config.filename}: OK, model {config.data['model']['type']}"
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        tensors = list(parameters())
        total = sum(p.numel() for p in tensors)
        trainable = sum(p.numel() for p in tensors if p.requires_grad)
        line += f" with {total:,} parameters ({trainable:,} trainable)"
    checked = check_data(config, model, dry_run=not args.no_dry_run)
    print(line + (f"; {checked}" if checked else ""))
    from .data_paths import data_paths_note

    note = None if checked else data_paths_note(config.data)
    if note:
        print(note, file=sys.stderr)
    return 0


def run_summary(result: dict[str, Any], *, rows: Sequence[tuple[str, str]] = ()) -> str:
    """What a finished training run prints: its last evaluation and where its files are;
    ``rows``: ``(label, text)`` lines the ``selfsup_after_training`` hooks added (selfsup-trackers:
    the curves), printed after the metrics file."""
    from .engine.logger import METRICS_FILE, format_duration, format_results

    work_dir = Path(result["work_dir"])
    lines = [f"done: epoch {result['epoch']}, iteration {result['iter']} "
             f"in {format_duration(result.get('seconds', float('nan')))}"]
    evaluation = result.get("eval")
    if evaluation:
        scores = {k: v for k, v in evaluation.items() if k not in ("time", "mode", "epoch", "iter", "eval_seconds")
                  and not k.startswith("best_")}
        lines.append(f"  evaluation after epoch {evaluation['epoch']}: {format_results(scores)}")
    lines += [f"  checkpoint  {result['checkpoint']}   (backbone weights: selfsup-run export {work_dir} backbone.pth)",
              f"  metrics     {work_dir / METRICS_FILE}",
              *(f"  {label:<12}{text}" for label, text in rows),
              f"  config      {work_dir / 'config.toml'}"]
    return "\n".join(lines)




def _check_trainer_sections(config: Any, model: Any) -> None:
    """Validate [runner], [data], [optimizer], [lr_config] ... together and construct the
    [[hooks]] (their constructors check values, e.g. a negative queue length); one error lists all."""
    from .build import build_hooks
    from .engine.optim import build_optimizer
    from .engine.schedules import build_lr_schedule
    from .engine.settings import read_settings
    from .errors import ConfigError, Problems
    from .sections import section_problems

    problems = Problems(config)
    max_epochs = 1
    try:
        max_epochs = read_settings(config).max_epochs
    except ConfigError as exc:
        problems += exc.problems
    problems += section_problems(config)
    try:
        optimizer = build_optimizer(model, config.data.get("optimizer", {"type": "SGD", "lr": 0.1}), config=config)
        build_lr_schedule(config.data.get("lr_config"), optimizer, iters_per_epoch=1, max_epochs=max_epochs, config=config)
    except ConfigError as exc:
        problems += exc.problems
    try:
        build_hooks(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)


def _show_config(args: argparse.Namespace) -> int:
    config = load_command_config(args)
    sys.stdout.write(f"# resolved from {config.filename}\n{config.to_toml()}")
    return 0


def _list(args: argparse.Namespace) -> int:
    if args.args:
        from .describe import run as show

        return show(argparse.Namespace(name=args.args, kind=args.kind, json=args.json))
    if args.kind == "configs":  # the configs installed distributions ship (selfsup_core.packaged_configs)
        from .packaged_configs import print_listing

        return print_listing()
    kinds = [_registry.canonical_kind(args.kind)] if args.kind else list(_registry.KINDS)
    registries = _session.registries()
    report: dict[str, Any] = {"kinds": {}, "broken_plugins": []}
    for kind in kinds:
        rows = []
        shown = set(registries[kind].list(args.pattern))
        components = [c for c in registries[kind].components() if c.name in shown]
        counts: dict[str, int] = {}
        for component in components:
            counts[component.name] = counts.get(component.name, 0) + 1
        for component in components:
            error = _component_error(component, args.verbose)
            rows.append(
                {
                    "name": component.name,
                    "dist": component.dist,
                    "version": component.version,
                    "target": component.target,
                    "duplicate": counts[component.name] > 1,
                    "error": error,
                }
            )
        report["kinds"][kind] = rows
    for broken in _session.plugin_manager().broken:
        report["broken_plugins"].append({"name": broken.name, "provider": broken.provider, "error": str(broken)})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_listing(report, args.verbose)
    return 0


def _component_error(component: _registry.Component, verbose: bool) -> str | None:
    """Why a component cannot be used, or None. Without ``verbose`` only metadata and
    module locations are checked (nothing is imported)."""
    if component.error is None and verbose:
        try:
            component.load()
        except SelfSupError:
            pass
    if component.error is not None:
        return describe_exception(component.error)
    module = component.target.partition(":")[0]
    top = module.split(".")[0]
    if module and top.isidentifier() and importlib.util.find_spec(top) is None:
        return f"module {top!r} is not installed"
    return None


def _print_listing(report: dict[str, Any], verbose: bool) -> None:
    for kind, rows in report["kinds"].items():
        print(f"{kind} ({_registry.KINDS[kind]}): {len(rows)}")
        if not rows:
            print("  (none installed)")
        width = max((len(r["name"]) for r in rows), default=0)
        for row in rows:
            provider = f"{row['dist']} {row['version']}".strip()
            line = f"  {row['name']:<{width}}  {provider}"
            if verbose:
                line += f"  [{row['target']}]"
            if row["duplicate"]:
                line += f"  (duplicate name: use type = \"{row['dist']}:{row['name']}\")"
            if row["error"]:
                line += f"  BROKEN: {row['error']}"
            print(line)
    if report["broken_plugins"]:
        print("broken plugins:")
        for broken in report["broken_plugins"]:
            print(f"  {broken['error']}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
