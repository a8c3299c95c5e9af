"""``migrate`` reaches ``selfsup-run`` as a plugin command, through ``selfsup_register_commands``."""
from __future__ import annotations

import argparse
import subprocess
import sys

from selfsup_core import session
from selfsup_core.cli import main, make_parser
from selfsup_core.hookspecs import hookimpl


def test_migrate_is_a_plugin_command_listed_in_help():
    done = subprocess.run([sys.executable, "-m", "selfsup_core.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "migrate " in done.stdout
    manager = session.plugin_manager()
    assert manager.get_plugin("migrate") is not None  # the selfsup.plugins entry point
    assert "selfsup_migrate.commands" in manager.get_plugin("migrate").__name__


def test_a_third_party_command_is_added_and_run(capsys):
    calls: list[argparse.Namespace] = []

    class Greeter:
        @hookimpl
        def selfsup_register_commands(self, commands):
            parser = commands.add_parser("greet", help="say hello")
            parser.add_argument("name")
            parser.set_defaults(selfsup_run=lambda args: calls.append(args) or 0)

    manager = session.plugin_manager()
    greeter = Greeter()
    manager.register(greeter)
    try:
        assert "greet" in make_parser().get_default("command_names")
        assert main(["greet", "Ada"]) == 0
        assert [c.name for c in calls] == ["Ada"]
    finally:
        manager.unregister(greeter)
