"""The public API for plugins: the only ``selfsup_core`` module a plugin imports from.

Everything a plugin needs from the core is named here and stays compatible within a minor
version (plugins depend on ``selfsup-core>=0.1,<0.2``); every other module of the core is
private and may change. ``selfsup_core.testing`` is the public module for plugins' tests.
Names are imported lazily, on first use, so importing this module costs nothing (plugin
modules are imported by ``selfsup-run list`` and ``--help``, which never import torch)::

    from selfsup_core.api import ConfigError, build_loader, dist, hookimpl

``tests/test_public_api.py`` fails when a plugin of this repository imports a private module.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> "module" (the module itself), "module:attribute", or "registry:KIND:NAME"
#: (the component a plugin registers, e.g. selfsup-models's LARS optimizer)
_EXPORTS: dict[str, str] = {
    # errors
    "SelfSupError": "selfsup_core.errors:SelfSupError",
    "ConfigError": "selfsup_core.errors:ConfigError",
    "did_you_mean": "selfsup_core.errors:did_you_mean",
    "unwrap_worker_message": "selfsup_core.errors:unwrap_worker_message",
    "describe_exception": "selfsup_core.errors:describe_exception",
    "Problem": "selfsup_core.errors:Problem",
    "Problems": "selfsup_core.errors:Problems",
    # configs and building components
    "Config": "selfsup_core.config:Config",
    "DELETE_KEY": "selfsup_core.config:DELETE_KEY",
    "display_path": "selfsup_core.config:display_path",
    "dump_toml": "selfsup_core.config:dump_toml",
    "read_config_text": "selfsup_core.config:read_config_text",
    "strip_delete": "selfsup_core.config:strip_delete",
    "kind_for_key": "selfsup_core.build:kind_for_key",
    "LR_POLICIES": "selfsup_core.engine.lr_policies:POLICIES",
    "LR_COMMON_KEYS": "selfsup_core.engine.lr_policies:COMMON_KEYS",
    "LR_POLICY_KEYS": "selfsup_core.engine.lr_policies:POLICY_KEYS",
    "LrPolicy": "selfsup_core.engine.lr_policies:LrPolicy",
    "PolicyTable": "selfsup_core.engine.lr_policies:PolicyTable",
    "load_config": "selfsup_core.config:load_config",
    "resolve_packaged_config": "selfsup_core.packaged_configs:resolve",
    "Builder": "selfsup_core.build:Builder",
    "build": "selfsup_core.build:build",
    "build_model": "selfsup_core.build:build_model",
    "registry": "selfsup_core.registry",
    # plugins and hooks
    "hookimpl": "selfsup_core.hookspecs:hookimpl",
    "Runner": "selfsup_core.hookspecs:Runner",
    "get_plugin_manager": "selfsup_core.session:plugin_manager",
    "Session": "selfsup_core.session:Session",
    "session": "selfsup_core.session",
    "cli_main": "selfsup_core.cli:main",
    "add_config_arguments": "selfsup_core.cli:add_config_arguments",
    "add_import_path_argument": "selfsup_core.cli:add_import_path_argument",
    "load_command_config": "selfsup_core.cli:load_command_config",
    "resolve_checkpoint": "selfsup_core.session:resolve_checkpoint",
    # files
    "atomic_write": "selfsup_core.fileio:atomic_write",
    "atomic_write_text": "selfsup_core.fileio:atomic_write_text",
    "atomic_save": "selfsup_core.engine.checkpoint:atomic_save",
    "CheckpointError": "selfsup_core.engine.checkpoint:CheckpointError",
    "LATEST_CHECKPOINT": "selfsup_core.engine.checkpoint:LATEST",
    "WeightsError": "selfsup_core.engine.weights_io:WeightsError",
    "read_state_dict": "selfsup_core.engine.weights_io:read_state_dict",
    "select_prefix": "selfsup_core.engine.weights_io:select_prefix",
    "split_prefix": "selfsup_core.engine.weights_io:split_prefix",
    "load_safetensors": "selfsup_core.engine.weights_io:load_safetensors",
    "save_safetensors": "selfsup_core.engine.weights_io:save_safetensors",
    "read_safetensors_metadata": "selfsup_core.engine.weights_io:read_safetensors_metadata",
    "find_latest_checkpoint": "selfsup_core.engine.checkpoint:find_latest",
    "list_epoch_checkpoints": "selfsup_core.engine.checkpoint:list_epoch_checkpoints",
    "read_toml": "selfsup_core.config:read_toml",
    "METRICS_FILE": "selfsup_core.engine.logger:METRICS_FILE",
    "core_version": "selfsup_core:__version__",
    "ConvertedBackbone": "selfsup_core.hookspecs:ConvertedBackbone",
    # the engine: distributed helpers, data loading, optimizers, loading weights
    "dist": "selfsup_core.engine.dist",
    "SeededSampler": "selfsup_core.engine.data:SeededSampler",
    "build_loader": "selfsup_core.engine.data:build_loader",
    "device_transform_of": "selfsup_core.engine.data:device_transform_of",
    "images_of": "selfsup_core.engine.data:images_of",
    "loader_batches": "selfsup_core.engine.data:loader_batches",
    "to_device": "selfsup_core.engine.data:to_device",
    "LARS": "registry:optimizers:LARS",
    "build_optimizer": "selfsup_core.engine.optim:build_optimizer",
    "BatchNormNd": "selfsup_core.engine.runtime:BatchNormNd",
    "revert_sync_batchnorm": "selfsup_core.engine.runtime:revert_sync_batchnorm",
    "MomentumUpdate": "selfsup_core.engine.hooks:MomentumUpdate",
    "load_weights": "selfsup_core.engine.model_weights:load_weights",
    "load_summary": "selfsup_core.engine.model_weights:load_summary",
    "Trainer": "selfsup_core.engine.trainer:Trainer",
    "ActiveRuntime": "selfsup_core.engine.runtimes:ActiveRuntime",
    "train": "selfsup_core.engine.trainer:train",
    # config sections plugins declare (selfsup_config_sections), and what a plugin that runs
    # models outside the trainer needs (selfsup-eval's ``eval`` command)
    "ConfigSection": "selfsup_core.hookspecs:ConfigSection",
    "check_table": "selfsup_core.engine.settings:check_table",
    "validate": "selfsup_core.build:validate",
    "describe_exception": "selfsup_core.errors:describe_exception",
    "format_results": "selfsup_core.engine.logger:format_results",
    "device_type_of": "selfsup_core.engine.runtime:device_type_of",
    "resolve_device": "selfsup_core.engine.runtime:resolve_device",
    "resolve_precision": "selfsup_core.engine.runtime:resolve_precision",
    "use_channels_last": "selfsup_core.engine.runtime:use_channels_last",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        from .errors import did_you_mean

        raise AttributeError(f"selfsup_core.api has no {name!r}{did_you_mean(name, _EXPORTS)}")
    module_name, _, attribute = target.partition(":")
    if module_name == "registry":
        from . import session

        kind, _, component = attribute.partition(":")
        return session.registries()[kind].get(component)  # not cached: registries can change
    module = importlib.import_module(module_name)
    value = getattr(module, attribute) if attribute else module
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
