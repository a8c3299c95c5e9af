"""Distributed runtimes are registered components: ``[runner] distributed`` names one."""
from __future__ import annotations

import pytest

from selfsup_core import registry, session
from selfsup_core.config import load_config
from selfsup_core.engine.runtimes import DDPRuntime
from selfsup_core.engine.settings import read_settings
from selfsup_core.errors import ConfigError


def test_ddp_is_the_registered_default_runtime():
    runtimes = session.registries()["runtimes"]
    assert "ddp" in runtimes.names()
    assert runtimes.lookup("ddp").load() is DDPRuntime
    assert runtimes.lookup("ddp").dist == "selfsup-core"


def test_the_runtime_is_read_from_the_runner_table_and_checked(write_config):
    assert read_settings(load_config(write_config())).distributed == "ddp"
    bad = load_config(write_config(), ['runner.distributed="fsdb"'])
    with pytest.raises(ConfigError, match=r"runner\.distributed: unknown distributed runtime 'fsdb'.*installed: ddp"):
        read_settings(bad)


def test_a_plugin_runtime_is_listed_and_accepted(selfsup_site, write_config):
    selfsup_site.add("acme-fsdp", entry_points={"selfsup.runtimes": {"fsdp2": "acme_fsdp:FSDP2Runtime"}},
                     modules={"acme_fsdp.py": "class FSDP2Runtime:\n    def __init__(self, model, *, device, settings):\n"
                                              "        self.module = model\n"})
    with session.use(registries=selfsup_site.registries()):
        assert session.registries()["runtimes"].names() == ["fsdp2"]  # this site's distributions only
        assert read_settings(load_config(write_config(), ['runner.distributed="fsdp2"'])).distributed == "fsdp2"


def test_trainer_kinds_are_not_config_components(write_config):
    """``[optimizer] type = "LARS"`` names a registered optimizer, yet the table is the
    trainer's (built with the model's parameters), not a component to validate on its own."""
    from selfsup_core.build import validate

    config = load_config(write_config(), ['optimizer.type="LARS"'])
    validate(config)  # no "missing required argument 'params'"
    assert session.registries()["optimizers"].lookup("LARS").dist == "selfsup-models"
