"""The ``migrate`` sub-command of ``selfsup-run`` (registered through ``selfsup_register_commands``).

Loaded by every ``selfsup-run`` call, ``--help`` included: it declares arguments only and
imports the migrator when the command runs.
"""
from __future__ import annotations

import argparse

from selfsup_core.api import add_import_path_argument, hookimpl


def run(args: argparse.Namespace) -> int:
    """Run ``selfsup-run migrate`` (see :func:`selfsup_migrate.migrate.run`)."""
    from .migrate import run as migrate

    return migrate(args)


@hookimpl
def selfsup_register_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "migrate", help="convert an MMSelfSup 0.x / OpenSelfSup Python config to TOML (parsed, never executed)"
    )
    parser.add_argument("old_config", metavar="OLD_CONFIG", help="the Python config (.py)")
    parser.add_argument("-o", "--out", metavar="NEW", help="the TOML to write (default: print it)")
    parser.add_argument("--force", action="store_true", help="overwrite NEW if it exists")
    parser.add_argument("--check", action="store_true", help="then validate and build the converted config")
    add_import_path_argument(parser)
    parser.set_defaults(selfsup_run=run)
