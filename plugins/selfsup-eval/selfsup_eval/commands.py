"""The ``eval`` and ``tsne`` sub-commands of ``selfsup-run`` (registered by
:mod:`selfsup_eval.plugin` through ``selfsup_register_commands``).

Loaded by every ``selfsup-run`` call, ``--help`` included: it declares arguments only and
imports the evaluation engine (torch) when a command runs.
"""
from __future__ import annotations

import argparse
from typing import Any

from selfsup_core.api import add_config_arguments


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``eval`` and ``tsne`` to ``selfsup-run``'s sub-commands; called when the command
    line is parsed."""
    for name, text in (("eval", "evaluate a checkpoint's features with the [evaluation] table's evaluators"),
                       ("tsne", "plot a t-SNE map of a checkpoint's test features (PNG)")):
        evaluate = commands.add_parser(name, help=text)
        add_config_arguments(evaluate)
        evaluate.add_argument("--checkpoint", metavar="CKPT",
                              help="a training checkpoint (default: none, the model as its init_cfg builds it)")
        if name == "eval":
            evaluate.add_argument("--evaluator", nargs="+", action="extend", metavar="NAME",
                                  help="which evaluators: knn, linear, ... (a type name or its start; default: "
                                       "those of [evaluation] evaluators, else KNN)")
        evaluate.add_argument("--work-dir", metavar="DIR", help="where outputs go (default: the checkpoint's folder)")
        evaluate.add_argument("--out", metavar="FILE",
                              help="the results JSON (default: WORK_DIR/eval/<checkpoint>_<evaluators>.json)"
                              if name == "eval" else "the PNG (default: WORK_DIR/tsne_<checkpoint>.png)")
        evaluate.add_argument("--device", metavar="DEV", help="cpu, cuda, cuda:N (default: the config's, else auto)")
        evaluate.set_defaults(selfsup_run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``selfsup-run eval`` or ``selfsup-run tsne``: evaluate ``args.checkpoint`` with the
    config's model, print the results and where they were written; returns the exit status."""
    from selfsup_core.api import format_results, load_command_config

    from .evaluation import SECTION, evaluate_checkpoint

    config = load_command_config(args)
    tsne = args.command == "tsne"
    if tsne and args.out:
        config.set((SECTION, "evaluators"), [{**tsne_table(config), "out": args.out}], origin="--out")
    record = evaluate_checkpoint(
        config,
        checkpoint=args.checkpoint,
        evaluators=["TSNE"] if tsne else args.evaluator,
        work_dir=args.work_dir,
        out=None if tsne else args.out,
        device=args.device,
    )
    if "output" in record:
        print(format_results(record["results"]))
        print(f"results written to {record['output']}")
    return 0


def tsne_table(config: Any) -> dict[str, Any]:
    """The config's TSNE evaluator table (its arguments), or a bare one."""
    tables = config.data.get("evaluation", {}).get("evaluators") or []
    found = [t for t in tables if str(t.get("type", "")).rpartition(":")[2].lower() == "tsne"]
    return dict(found[0]) if found else {"type": "TSNE"}
