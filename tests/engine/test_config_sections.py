"""Top-level config sections declared by plugins (``selfsup_config_sections``) and trainer hooks
contributed by plugins (``selfsup_run_hooks``): the core hard-codes no plugin's section."""
from __future__ import annotations

from pathlib import Path

import pytest

from selfsup_core import plugins as _plugins
from selfsup_core import sections
from selfsup_core.api import ConfigError, ConfigSection, hookimpl
from selfsup_core.config import load_config
from selfsup_core.engine.dry_run import preflight
from selfsup_core.engine.settings import read_settings
from selfsup_core.engine.trainer import Trainer


class ProbePlugin:
    """Declares ``[probe]`` (``every`` must be >= 1; ``data`` is a dataset table) and, when
    ``[probe] every`` is set, a run hook that counts epochs and keeps its count in checkpoints."""

    def __init__(self) -> None:
        self.hook = None

    @hookimpl
    def selfsup_config_sections(self):
        return [ConfigSection("probe", "a test section", check=self.check, components={"data": "datasets"})]

    @staticmethod
    def check(config):
        every = config.data["probe"].get("every", 1)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(config.problem(("probe", "every"), f"must be >= 1, got {every!r}"))

    @hookimpl
    def selfsup_run_hooks(self, config, builder):
        if "probe" not in config.data:
            return None
        self.hook = EpochCounter()
        return [("probe", self.hook)]


class EpochCounter:
    def __init__(self) -> None:
        self.epochs = 0

    def selfsup_after_epoch(self, runner) -> None:
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


@pytest.fixture
def probe(selfsup_plugin_manager):
    plugin = ProbePlugin()
    selfsup_plugin_manager.register(plugin, name="probe-plugin")
    return plugin


def _problems(config, manager=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        read_settings(config, manager)
    return [f"{Path(p.file).name}: {p.key}: {p.message}" for p in info.value.problems]


def test_a_declared_section_is_accepted_checked_and_its_datasets_validated(write_config, probe):
    config = load_config(write_config("[probe]\nevery = 2\n"))
    assert read_settings(config).max_epochs == 3
    assert sections.declared()["probe"].description == "a test section"
    assert sections.top_level_keys()[-1] == "probe"
    bad = load_config(write_config("[probe]\nevery = 0\n[probe.data]\ntype = 'NoSuchDataset'\n", name="bad.toml"))
    with pytest.raises(ConfigError) as info:
        preflight(bad)
    text = str(info.value)
    assert "bad.toml: probe.every: must be >= 1, got 0" in text
    assert "bad.toml: probe.data.type: unknown datasets type 'NoSuchDataset'" in text


def test_an_unknown_section_gets_a_did_you_mean_over_core_and_declared_sections(write_config, probe):
    config = load_config(write_config("[prob]\nevery = 2\n[optimiser]\nlr = 0.1\n", name="typo.toml"))
    assert _problems(config) == ["typo.toml: prob: unknown top-level key; did you mean 'probe'?",
                                 "typo.toml: optimiser: unknown top-level key; did you mean 'optimizer'?"]


def test_a_section_of_a_plugin_that_is_not_installed_says_what_to_install(write_config, selfsup_plugin_manager):
    config = load_config(write_config("[evaluation]\ninterval = 1\n", name="eval.toml"))
    assert _problems(config) == [
        "eval.toml: evaluation: unknown top-level key: [evaluation] is the section of the selfsup-eval plugin, which "
        "is not installed or did not load (pip install selfsup-eval; selfsup-run list shows broken plugins)"]


def test_the_installed_eval_plugin_declares_evaluation(write_config):
    pytest.importorskip("selfsup_eval")
    declared = sections.declared()
    assert declared["evaluation"].provider.startswith("selfsup-eval ")
    assert declared["evaluation"].components == {"train": "datasets", "test": "datasets"}
    config = load_config(write_config("[evaluaton]\ninterval = 1\n", name="typo.toml"))
    assert _problems(config) == ["typo.toml: evaluaton: unknown top-level key; did you mean 'evaluation'?"]


def test_a_plugin_contributes_a_run_hook_with_checkpointed_state(write_config, tmp_path, probe):
    path = write_config("[probe]\nevery = 1\n")
    work = tmp_path / "run"
    Trainer(load_config(path, ["runner.max_epochs=2"]), work_dir=work).run()
    assert probe.hook.epochs == 2
    Trainer(load_config(path, ["runner.max_epochs=3"]), work_dir=work, resume="auto").run()
    assert probe.hook.epochs == 3  # restored from the checkpoint (2), then one more epoch


def test_a_trainer_checks_sections_against_its_own_plugin_manager(write_config, tmp_path):
    manager = _plugins.PluginManager(load_entry_points=False)
    manager.register(ProbePlugin(), name="probe-plugin")
    config = load_config(write_config("[probe]\nevery = 1\n"))
    Trainer(config, work_dir=tmp_path / "run", plugin_manager=manager)  # validated without error
    with pytest.raises(ConfigError, match="probe: unknown top-level key"):
        Trainer(load_config(write_config("[probe]\nevery = 1\n")), work_dir=tmp_path / "run",
                plugin_manager=_plugins.PluginManager(load_entry_points=False))
