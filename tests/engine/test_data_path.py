"""The core's data path: a DataLoader, or device-resident batches a plugin's
``selfsup_resident_data`` hook provides (the core itself knows no resident implementation)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from selfsup_core.config import Config
from selfsup_core.engine.data_path import build_data_path
from selfsup_core.errors import ConfigError
from selfsup_core.hookspecs import hookimpl


def _runner(resident, manager):
    settings = SimpleNamespace(resident=resident, samples_per_gpu=4, seed=0, drop_last=True, replace=False,
                               workers_per_gpu=0, persistent_workers=False, prefetch_factor=None, pin_memory="auto")
    config = Config({"data": {"resident": resident}}, filename="c.toml")
    return SimpleNamespace(config=config, settings=settings, dataset=list(range(16)), device=torch.device("cpu"),
                           rank=0, world_size=1, plugin_manager=manager)


def test_without_a_resident_plugin_auto_uses_a_loader_and_true_is_one_line(selfsup_plugin_manager):
    loader, _, description = build_data_path(_runner("auto", selfsup_plugin_manager))
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert description == "DataLoader, 0 workers (not resident: no installed plugin holds data on the device (selfsup-data does))"
    with pytest.raises(ConfigError) as info:
        build_data_path(_runner(True, selfsup_plugin_manager))
    assert str(info.value) == ('c.toml: data.resident: no installed plugin holds data on the device (selfsup-data does); '
                               'set data.resident = "auto" or false')


def test_a_plugin_answers_with_batches_or_a_reason(selfsup_plugin_manager):
    class Resident:
        answer: object = None

        @hookimpl
        def selfsup_resident_data(self, runner, memory):
            return self.answer

    plugin = Resident()
    selfsup_plugin_manager.register(plugin)
    plugin.answer = ("batches", "sampler", "resident on cpu (tiny)")
    assert build_data_path(_runner("auto", selfsup_plugin_manager)) == plugin.answer
    plugin.answer = "the set is a list"
    assert build_data_path(_runner("auto", selfsup_plugin_manager))[2] == "DataLoader, 0 workers (not resident: the set is a list)"
    assert build_data_path(_runner(False, selfsup_plugin_manager))[2] == "DataLoader, 0 workers"
