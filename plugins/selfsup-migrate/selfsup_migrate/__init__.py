"""selfsup-migrate: ``selfsup-run migrate``, MMSelfSup 0.x / OpenSelfSup Python configs to TOML.

:mod:`selfsup_migrate.static_eval` reads a Python config without running it;
:mod:`selfsup_migrate.migrate` maps the old vocabulary onto selfsup's components;
:mod:`selfsup_migrate.commands` adds the command to ``selfsup-run`` (a ``selfsup.plugins``
entry point implementing ``selfsup_register_commands``). Importing this package imports
nothing heavy.
"""
from __future__ import annotations

__version__ = "0.1.0"
