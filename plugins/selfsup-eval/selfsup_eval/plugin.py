"""selfsup-eval's plugin object (entry point ``eval`` in ``selfsup.plugins``): it declares
the ``[evaluation]`` config section, adds the ``eval`` and ``tsne`` commands and, when
``[evaluation] interval`` > 0, the online evaluation hook of a training run.

Imported by every ``selfsup-run`` call, ``--help`` included: nothing heavy is imported here.
"""
from __future__ import annotations

import argparse
from typing import Any

from selfsup_core.api import ConfigSection, hookimpl

#: what ``[evaluation]`` holds (``selfsup_config_sections``)
DESCRIPTION = "evaluators of learned features: online monitoring during training and selfsup-run eval"


def check_evaluation(config: Any) -> None:
    """Validate ``[evaluation]`` (one ConfigError listing every problem); called by the core
    before anything is built."""
    from .evaluation import read_eval_settings

    read_eval_settings(config)


@hookimpl
def selfsup_config_sections() -> list[ConfigSection]:
    return [ConfigSection("evaluation", DESCRIPTION, check=check_evaluation,
                          components={"train": "datasets", "test": "datasets"})]


@hookimpl
def selfsup_register_commands(commands: argparse._SubParsersAction) -> None:
    from .commands import add_commands

    add_commands(commands)


@hookimpl
def selfsup_run_hooks(config: Any, builder: Any) -> list[tuple[str, Any]]:
    """The online evaluation hook (named ``evaluation`` in checkpoints) when ``[evaluation]
    interval`` > 0; nothing otherwise."""
    from .evaluation import build_online_evaluation

    online = build_online_evaluation(config, builder)
    return [] if online is None else [("evaluation", online)]
