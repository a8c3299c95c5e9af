"""Top-level config sections: the core's own and those plugins declare.

The core knows the sections its trainer reads (:data:`CORE_SECTIONS`). Any other top-level
table belongs to a plugin, which declares it through the ``selfsup_config_sections`` hook
with a :class:`ConfigSection` (selfsup-eval declares ``[evaluation]``). A top-level key that
neither the core nor an installed plugin declares is one problem with a did-you-mean over
both; for a section of a distribution of the selfsup repository that is not installed (or
failed to load) the problem says what to install.

Torch-free: the CLI validates top-level keys before anything heavy is imported.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from .errors import ConfigError, Problem, did_you_mean
from .hookspecs import ConfigSection

if TYPE_CHECKING:
    from .config import Config
    from .plugins import PluginManager

#: The top-level keys the core reads itself, with what they hold.
CORE_SECTIONS: dict[str, str] = {
    "model": "the algorithm to train (a component table)",
    "data": "the training data and its loader settings",
    "optimizer": "the optimizer",
    "optimizer_config": "gradient clipping and accumulation",
    "lr_config": "the learning-rate policy",
    "runner": "epochs, device, precision, distributed runtime",
    "checkpoint_config": "how often checkpoints are written and kept",
    "log_config": "logging and plotting",
    "hooks": "trainer hooks ([[hooks]] tables)",
    "seed": "the random seed",
    "deterministic": "deterministic algorithms",
    "work_dir": "where the run's files go",
    "custom_imports": "modules imported before building (0.x compatibility)",
}

#: Sections of the plugin distributions of the selfsup repository: used only to say which
#: distribution to install when a config has such a section and no installed plugin declares
#: it. Each section's meaning and checks come from its plugin, never from here.
INSTALL_HINTS: dict[str, str] = {"evaluation": "selfsup-eval"}


def declared(manager: PluginManager | None = None) -> dict[str, ConfigSection]:
    """The sections the installed plugins declare, by name (first declaration of a name
    wins; ``provider`` is set to the declaring plugin's distribution)."""
    from . import session as _session

    manager = manager if manager is not None else _session.plugin_manager()
    found: dict[str, ConfigSection] = {}
    for impl in manager.hook.selfsup_config_sections.get_hookimpls():
        provider = manager.provider(impl.plugin_name)
        for section in impl.function() or ():
            if section.name not in found and section.name not in CORE_SECTIONS:
                found[section.name] = attrs.evolve(section, provider=provider)
    return found


def top_level_keys(manager: PluginManager | None = None) -> list[str]:
    """Every top-level key a config may have: the core's, then the declared sections."""
    return [*CORE_SECTIONS, *declared(manager)]


def top_level_problems(config: Config, manager: PluginManager | None = None) -> list[Problem]:
    """One problem per top-level key of ``config`` that nobody declares (keys starting with
    ``_`` are the config's own, e.g. ``_base_``)."""
    known = top_level_keys(manager)
    problems = []
    for key in config.data:
        if key in known or key.startswith("_"):
            continue
        message = f"unknown top-level key{did_you_mean(key, known)}"
        if key in INSTALL_HINTS:
            message = (f"unknown top-level key: [{key}] is the section of the {INSTALL_HINTS[key]} plugin, which is not "
                       f"installed or did not load (pip install {INSTALL_HINTS[key]}; selfsup-run list shows broken plugins)")
        problems.append(config.problem((key,), message))
    return problems


def section_problems(config: Config, manager: PluginManager | None = None) -> list[Problem]:
    """The problems of every declared section ``config`` has (each section's ``check``)."""
    problems: list[Problem] = []
    for name, section in declared(manager).items():
        if name in config.data and section.check is not None:
            try:
                section.check(config)
            except ConfigError as exc:
                problems += [p for p in exc.problems if p not in problems]
    return problems


def check_sections(config: Config, manager: PluginManager | None = None) -> None:
    """Raise one :class:`ConfigError` listing the problems of the declared sections."""
    problems = section_problems(config, manager)
    if problems:
        raise ConfigError(problems)


def component_keys(manager: PluginManager | None = None) -> dict[tuple[str, str], str]:
    """``(section, key) -> kind`` of the component tables the declared sections hold."""
    return {(name, key): kind for name, section in declared(manager).items()
            for key, kind in section.components.items()}


__all__ = ["CORE_SECTIONS", "ConfigSection", "INSTALL_HINTS", "check_sections", "component_keys", "declared",
           "section_problems", "top_level_keys", "top_level_problems"]

