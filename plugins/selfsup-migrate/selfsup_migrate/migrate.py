"""``selfsup-run migrate OLD_CONFIG.py [-o NEW.toml] [--force] [--check]``: MMSelfSup 0.x and
OpenSelfSup Python configs -> selfsup TOML.

Migrating MMSelfSup / OpenSelfSup configs
-----------------------------------------
::

    selfsup-run migrate configs/selfsup/mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py -o mocov2.toml --check

The Python file is *parsed*, never run (see :mod:`selfsup_migrate.static_eval`): literals,
``dict(...)``, list operations (``.extend``, ``.append``, ``+``), ``copy.deepcopy``, ``if`` on
known values, names defined earlier, ``_base_`` chains and ``{{_base_.x}}`` references are
evaluated; anything else (``os.system(...)``, unknown functions, loops, lambdas, used
imports) is refused with ``FILE:LINE`` and nothing is written. The result is one TOML file
without ``_base_`` (everything inherited spelled out) that starts with a comment naming the
source, the ``_base_`` files read and the command, and ends with the list of dropped keys.

What is renamed (the old names are understood here, not by the registry):

==========================================  ===================================================
old (OpenSelfSup / MMSelfSup 0.x)           selfsup
==========================================  ===================================================
``MOCO``                                    ``MoCo``
``pretrained='x'`` (algorithm)              backbone ``init_cfg = {type="Pretrained", checkpoint="x"}``
``NonLinearNeckV0``                         ``ODCNeck`` (``norm_cfg`` BN, SyncBN with ``sync_bn``)
``NonLinearNeckV1``                         ``MoCoV2Neck``
``NonLinearNeckV2``                         ``NonLinearNeck`` (2 layers, ``with_bias``,
                                            ``with_last_bias``, no last BN; BN or SyncBN)
``NonLinearNeckSimCLR``                     ``NonLinearNeck`` (no biases, last BN; SyncBN
                                            unless ``sync_bn=False``)
``AvgPoolNeck``                             ``AvgPool2dNeck``
``ContrastiveDataset``                      ``MultiViewDataset`` (``num_views=[2]``)
``BYOLDataset`` (``pipeline1/2``)           ``MultiViewDataset`` (``num_views=[1, 1]``)
``ClassificationDataset``, ``ExtractDataset``,
``NPIDDataset``, ``SingleViewDataset``      ``OneViewDataset``
``ImageNet``/``ImageList`` with a list      ``ImageList`` (``ann_file``, ``root``)
``ImageNet`` without a list                 ``ImageFolder`` (``root``)
``Cifar10``/``CIFAR10``, ``Cifar100``       ``CIFAR10``, ``CIFAR100`` (``root``, ``split``)
``RandomApply``                             ``RandomAppliedTrans``
``ToTensor``                                ``ToImage`` + ``ToDtype(dtype="float32", scale=true)``
``BYOLHook``, ``MomentumUpdateHook``        ``MomentumUpdate``
``imgs_per_gpu``                            ``data.samples_per_gpu``
``total_epochs``, ``runner.max_epochs``     ``runner.max_epochs``
``optimizer_config.update_interval``        ``optimizer_config.accumulate_steps``
``optimizer_config.grad_clip``              ``optimizer_config.grad_clip`` (max_norm, norm_type)
``fp16 = dict(...)``, ``use_fp16``          ``runner.precision = "fp16"``
``cudnn_benchmark``, ``find_unused_parameters``  ``runner.*``
``log_config`` TensorboardLoggerHook        ``log_config.tensorboard = true``
``custom_hooks``                            ``[[hooks]]``
``sampling_replace``, ``data.replace``      ``data.replace`` (sampling with replacement)
Swin ``stage_cfgs.block_cfgs.window_size``  ``window_size`` (other per-stage options dropped)
``StepFixCosineAnnealing``                  kept by name, every key unchanged
==========================================  ===================================================

Old defaults are written out: DeepCluster gets the old ``with_sobel`` unless the config sets
it (OpenSelfSup's default was ``false``, MMSelfSup 0.x's ``true``, as ours); MMSelfSup 0.x's
``VisionTransformer`` (MoCo v3) gets ``pos_embed_type = "sincos"`` (it always used a fixed
sin-cos position embedding) unless it loads ``Pretrained`` weights. The old momentum hooks' ``update_interval`` counts iterations,
ours optimizer steps: with ``accumulate_steps = N`` it is divided by N (dropped when it
becomes 1). ``imgs_per_gpu`` of a DeepCluster/ODC hook's ``extractor`` becomes
``samples_per_gpu``. ``NonLinearNeckSimCLR`` keeps its ``with_bias`` (every linear layer, the
last one included) and ``with_last_bn``. An MMSelfSup 1.x (MMEngine) config
(``train_dataloader``, ``optim_wrapper``, ``param_scheduler``, ``default_hooks``,
``default_scope``) is refused: it is another schema.

Refused with one line (exit 2, nothing written): a config whose ``model.type`` no installed
algorithm provides (benchmarks' ``Classification``/``ImageClassifier``: use ``selfsup-run
eval``; ``MaskRCNN``/``EncoderDecoder``: detection and segmentation run elsewhere; methods not
implemented yet, e.g. BEiT, MixMIM, unless a plugin provides one of that name), a
config without ``model``, a ``type`` that is an import path (``os:system``, ``pkg.mod.Class``;
a qualified ``dist:Name`` of an installed component is kept) and a YAML file (detectron2's
benchmark configs). ``--check`` (of any config) lists the data paths the run will read; it opens none of them.

OpenSelfSup's ``GaussianBlur`` and ``Solarization`` always applied (``RandomAppliedTrans``
gave the probability); ours take ``p`` (default 0.5), so a converted OpenSelfSup config gets
``p = 1.0`` where the old one had none. Keys selfsup has no use for (``dist_params``,
``workflow``, ``load_from``, ``memcached`` ...) are dropped, each reported on stderr as
``dropped <dotted.key>: <why>`` and listed at the end of the TOML; an unknown component type
is kept as written with a warning.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from selfsup_core.api import (
    LR_COMMON_KEYS, LR_POLICIES, LR_POLICY_KEYS, ConfigError, atomic_write_text, display_path, dump_toml,
)

from .static_eval import load_python_config

OPENSELFSUP = "OpenSelfSup"
MMSELFSUP = "MMSelfSup 0.x"

#: Old component names -> ours, per kind (old names that equal ours are not listed).
RENAMES: dict[str, dict[str, str]] = {
    "algorithms": {"MOCO": "MoCo"},
    "necks": {"NonLinearNeckV0": "ODCNeck", "NonLinearNeckV1": "MoCoV2Neck", "NonLinearNeckV2": "NonLinearNeck",
              "NonLinearNeckSimCLR": "NonLinearNeck", "AvgPoolNeck": "AvgPool2dNeck"},
    "datasets": {"ContrastiveDataset": "MultiViewDataset", "BYOLDataset": "MultiViewDataset",
                 "ClassificationDataset": "OneViewDataset", "ExtractDataset": "OneViewDataset",
                 "NPIDDataset": "OneViewDataset", "SingleViewDataset": "OneViewDataset"},
    "data_sources": {"Cifar10": "CIFAR10", "Cifar100": "CIFAR100"},
    "transforms": {"RandomApply": "RandomAppliedTrans"},
}
#: Old hook name -> (our candidate names, first installed wins; the arguments ours take).
HOOKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "BYOLHook": (("MomentumUpdate",), ("end_momentum", "update_interval")),
    "MomentumUpdateHook": (("MomentumUpdate",), ("end_momentum", "update_interval")),
    "MomentumUpdate": (("MomentumUpdate",), ("end_momentum", "update_interval")),
    "DeepClusterHook": (("DeepClusterHook", "DeepCluster"), ("extractor", "clustering", "unif_sampling", "reweight",
                                                              "reweight_pow", "init_memory", "initial", "interval")),
    "ODCHook": (("ODCHook", "ODC"), ("centroids_update_interval", "deal_with_small_clusters_interval",
                                      "evaluate_interval", "reweight", "reweight_pow")),
    "SwAVHook": (("SwAVHook", "SwAV"), ("batch_size", "epoch_queue_starts", "crops_for_assign", "feat_dim",
                                         "queue_length", "frozen_layers_cfg")),
    "DenseCLHook": (("DenseCLHook", "DenseCL"), ("start_iters",)),
    "SimSiamHook": (("SimSiamHook", "SimSiam"), ("fix_pred_lr", "lr")),
    "InterCLRHook": (("InterCLRHook",), ("extractor", "clustering", "centroids_update_interval",
                                         "deal_with_small_clusters_interval", "evaluate_interval", "warmup_epochs",
                                         "init_memory", "initial", "online_labels", "interval")),
}
DROPPED_HOOKS = {
    "ValidateHook": "online evaluation is configured in the [evaluation] table (see README, Evaluation)",
    "EvalHook": "online evaluation is configured in the [evaluation] table (see README, Evaluation)",
    "DistEvalHook": "online evaluation is configured in the [evaluation] table (see README, Evaluation)",
    "DistSamplerSeedHook": "the trainer seeds its sampler every epoch",
}
EXTRACTOR_KEYS = ("dataset", "pipeline", "samples_per_gpu", "workers_per_gpu")
CLUSTERING_KEYS = ("k", "pca_dim", "iterations", "seed", "init", "backend")
#: Arguments of old components that ours do not have, with the reason (any component).
OBSOLETE_ARGS = {
    "memcached": "memcached reading is not supported; images are read from the file system",
    "mclient_path": "memcached reading is not supported; images are read from the file system",
    "file_client_args": "files are read from the local file system",
    "prefetch": "no prefetch option; use workers_per_gpu (and augment_on = \"device\" for GPU augmentation)",
    "dist_mode": "distribution is detected at run time",
    "priority": "hooks run in their [[hooks]] order",
    "return_label": "a data source returns labels whenever it has them",
    "channel_order": "images are decoded as RGB",
    "size_average": "LatentPredictHead always averages the loss over the batch",
    "debug": "no debug mode",
}
#: Per (type, argument): arguments a specific component drops.
OBSOLETE_TYPE_ARGS = {
    ("ResNet", "style"): "only the 'pytorch' style exists (stride 2 in the 3x3 convolution)",
    ("ResNetV1d", "style"): "only the 'pytorch' style exists (stride 2 in the 3x3 convolution)",
    ("ResNet", "conv_cfg"): "convolutions are plain nn.Conv2d",
    ("ResNetV1d", "conv_cfg"): "convolutions are plain nn.Conv2d",
    ("MoCoV2Neck", "sync_bn"): "MoCoV2Neck has no normalisation layer",
    ("BYOL", "pre_conv"): "not an argument of selfsup's BYOL (an option of some OpenSelfSup versions); "
                          "check that the projector layers are the ones intended",
}
#: Top-level keys of old configs that have no selfsup equivalent.
DROPPED_TOP = {
    "dist_params": "torchrun and the environment choose the process-group backend",
    "log_level": "the log level is not configurable",
    "load_from": "whole-model weights are not loaded by a config key; give the backbone's weights as "
                 "init_cfg = {type = \"Pretrained\", checkpoint = ...} or continue a run with --resume",
    "resume_from": "continue a run with 'selfsup-run NEW.toml --resume CKPT'",
    "auto_resume": "continue a run with 'selfsup-run NEW.toml --resume'",
    "workflow": "only training epochs are run",
    "opencv_num_threads": "set by the trainer",
    "mp_start_method": "set by the trainer",
    "train_cfg": "not used",
    "test_cfg": "not used",
    "evaluation": "online evaluation is configured in the [evaluation] table (see README, Evaluation)",
    "custom_imports": "components come from installed plugins (entry points), not from imports",
    "prefetch": OBSOLETE_ARGS["prefetch"],
    "gpu_ids": "the devices are chosen by torchrun / --device",
    "device": "the device is chosen at run time (--device)",
    "gpus": "the devices are chosen by torchrun / --device",
}
#: Top-level keys that only MMSelfSup 1.x / MMEngine configs have (refused: a different schema).
MMENGINE_KEYS = ("train_dataloader", "optim_wrapper", "param_scheduler", "default_scope",
                 "default_hooks")
HELPER_REASON = "not a setting (a variable of the Python config; its value is used where the config refers to it)"
#: Output order of the top-level tables.
ORDER = ("seed", "deterministic", "work_dir", "model", "data", "optimizer", "optimizer_config", "lr_config", "runner",
         "checkpoint_config", "log_config", "hooks")
#: Registry scopes of OpenMMLab libraries (``type='mmcls.ResNet'``): components selfsup does not have.
OPENMMLAB_SCOPES = ("mmcls", "mmpretrain", "mmdet", "mmseg", "mmselfsup", "mmcv", "mmengine")
#: Keys whose typed tables are components of a kind (beyond build.KEY_KINDS).
EXTRA_KEY_KINDS = {"predictor": "necks", "memory_bank": "memories", "data_source": "data_sources"}


class Migration:
    """Converts one merged old config (plain data) to selfsup TOML data.

    ``cfg``: the merged module namespace of the Python config; ``installed``: a function
    telling whether a component ``(kind, name)`` is installed; ``shown``: the file name used in
    errors. After :meth:`convert`,
    ``drops`` holds ``(dotted key, why)`` pairs, ``warnings`` and ``notes`` lines.
    """

    def __init__(self, cfg: Mapping[str, Any], installed: Callable[[str | None, str], bool],
                 shown: str | None = None) -> None:
        self.cfg = cfg
        self.installed = installed
        self.shown = shown
        self.dialect = detect_dialect(cfg)
        self.out: dict[str, Any] = {}
        self.drops: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self.frozen_layers: Any = _ABSENT

    # reporting ------------------------------------------------------------------------------
    def drop(self, path: Iterable[Any], why: str) -> None:
        """Record that the key at ``path`` was not carried over, and why."""
        self.drops.append((".".join(str(p) for p in path), why))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def section(self, name: str) -> dict[str, Any]:
        """The output table ``name`` (created empty on first use)."""
        return self.out.setdefault(name, {})

    # top level ------------------------------------------------------------------------------
    def convert(self) -> dict[str, Any]:
        """Convert every top-level key; returns the TOML data in :data:`ORDER`."""
        handlers: dict[str, Callable[[Any], None]] = {
            "model": self.model, "data": self.data, "optimizer": self.optimizer,
            "optimizer_config": self.optimizer_config, "lr_config": self.lr_config, "runner": self.runner,
            "total_epochs": self.total_epochs, "checkpoint_config": self.checkpoint_config,
            "log_config": self.log_config, "custom_hooks": self.custom_hooks, "fp16": self.fp16,
        }
        runner_keys = {"cudnn_benchmark": "cudnn_benchmark", "find_unused_parameters": "find_unused_parameters"}
        newer = [key for key in MMENGINE_KEYS if key in self.cfg]
        if newer:
            raise ConfigError(f"this is an MMSelfSup 1.x (MMEngine) config ({', '.join(newer)}); only MMSelfSup 0.x "
                              "and OpenSelfSup configs (data, optimizer, lr_config, runner) can be migrated")
        if "model" not in self.cfg:
            raise ConfigError("no model: not a pre-training config (a kNN / SVM / t-SNE benchmark's settings?); "
                              "evaluate a checkpoint with 'selfsup-run eval CONFIG --checkpoint CKPT' or plot "
                              "features with 'selfsup-run tsne'", file=self.shown)
        for key, value in self.cfg.items():
            if key in handlers:
                handlers[key](value)
            elif key in ("seed", "deterministic", "work_dir"):
                self.keep_top(key, value)
            elif key in runner_keys:
                self.section("runner")[runner_keys[key]] = value
            elif key == "persistent_workers":
                self.section("data")["persistent_workers"] = value
            elif key in DROPPED_TOP:
                self.drop([key], DROPPED_TOP[key])
            else:
                self.drop([key], HELPER_REASON)
        self.place_frozen_layers()
        self.momentum_interval()
        data = {key: self.out[key] for key in ORDER if key in self.out and self.out[key] != {}}
        data.update({k: v for k, v in self.out.items() if k not in data and v != {}})
        data = clean(data, (), self)
        self.sweep_import_paths(data, ())
        return data

    def sweep_import_paths(self, value: Any, path: tuple[Any, ...]) -> None:
        """The last guard: no ``type`` anywhere in the output (``*_cfg`` tables and tables
        kept as written included) is an import path."""
        if isinstance(value, dict):
            if isinstance(value.get("type"), str):
                self.refuse_import_path(None, value["type"], path)
            for key, item in value.items():
                self.sweep_import_paths(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                self.sweep_import_paths(item, (*path, i))

    def place_frozen_layers(self) -> None:
        """MMSelfSup's ``optimizer_config.frozen_layers_cfg`` (SwAV prototypes) -> the SwAV hook's."""
        if self.frozen_layers is _ABSENT:
            return
        swav = [h for h in self.out.get("hooks", []) if h.get("type") in HOOKS["SwAVHook"][0]]
        if swav:
            swav[0].setdefault("frozen_layers_cfg", self.frozen_layers)
            self.note("optimizer_config.frozen_layers_cfg -> the SwAV hook's frozen_layers_cfg")
        else:
            self.drop(["optimizer_config", "frozen_layers_cfg"], "only the SwAV hook freezes layers; there is none")

    def momentum_interval(self) -> None:
        """The old ``BYOLHook``/``MomentumUpdateHook`` ``update_interval`` counts iterations;
        ours counts optimizer steps, which with ``accumulate_steps = N`` are N iterations each."""
        steps = self.out.get("optimizer_config", {}).get("accumulate_steps", 1)
        if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 1:
            return
        for i, hook in enumerate(self.out.get("hooks", [])):
            interval = hook.get("update_interval")
            if hook.get("type") not in HOOKS["MomentumUpdate"][0] or not isinstance(interval, int):
                continue
            if interval % steps:
                self.warnings.append(f"hooks.{i}.update_interval = {interval} iterations is not a multiple of "
                                     f"accumulate_steps = {steps}; selfsup counts optimizer steps: set it by hand")
                continue
            if interval == steps:
                del hook["update_interval"]
            else:
                hook["update_interval"] = interval // steps
            self.note(f"hooks.{i}.update_interval: {interval} iterations = {interval // steps} optimizer step(s) "
                      f"with accumulate_steps = {steps} (selfsup counts optimizer steps)")

    def keep_top(self, key: str, value: Any) -> None:
        if value is None:
            self.drop([key], "None (not set)")
        else:
            self.out[key] = value

    # model ----------------------------------------------------------------------------------
    def model(self, table: Any) -> None:
        """``model = dict(type=..., pretrained=..., backbone=..., ...)`` -> ``[model]``."""
        if not isinstance(table, dict):
            self.out["model"] = table
            return
        table = dict(table)
        self.require_algorithm(table.get("type"))
        pretrained = table.pop("pretrained", None) if "pretrained" in table else _ABSENT
        model = self.component(table, "algorithms", ("model",))
        if pretrained is None:
            self.drop(["model", "pretrained"], "None: no pretrained weights (the default)")
        elif pretrained is not _ABSENT:
            backbone = model.get("backbone")
            if isinstance(backbone, dict):
                backbone["init_cfg"] = {"type": "Pretrained", "checkpoint": pretrained}
                self.note(f"model.pretrained {pretrained!r} -> model.backbone.init_cfg (Pretrained)")
            else:
                self.drop(["model", "pretrained"], "the model has no backbone table to take init_cfg")
        self.algorithm_defaults(model)
        self.out["model"] = model

    def require_algorithm(self, old: Any) -> None:
        """Refuse a model that no installed algorithm builds (a benchmark's classifier or
        detector, a method not implemented yet); see :func:`refusal_for_model`."""
        if not isinstance(old, str):
            raise ConfigError("model has no type; a pre-training config names its algorithm "
                              "(model = dict(type='MoCo', ...))", file=self.shown, key="model.type")
        name = RENAMES["algorithms"].get(old, old)
        if ":" in name or "." in name or not self.installed("algorithms", name):
            raise ConfigError(refusal_for_model(old), file=self.shown, key="model.type")

    def algorithm_defaults(self, model: dict[str, Any]) -> None:
        """Write out the old defaults: DeepCluster's ``with_sobel`` (OpenSelfSup: False;
        MMSelfSup 0.x: True, as ours) and the fixed sin-cos position embedding of MMSelfSup
        0.x's ``VisionTransformer`` (learnable here)."""
        if model.get("type") == "DeepCluster" and "with_sobel" not in model:
            old_default = self.dialect == MMSELFSUP
            model["with_sobel"] = old_default
            self.note(f"model.with_sobel = {str(old_default).lower()}: {self.dialect}'s DeepCluster built the "
                      f"Sobel layer {'by default' if old_default else 'only when asked (default False)'}; "
                      "written out (selfsup's default is true)")
        backbone = model.get("backbone")
        if isinstance(backbone, dict) and backbone.get("type") == "VisionTransformer" \
                and "pos_embed_type" not in backbone:
            init = backbone.get("init_cfg")
            if not (isinstance(init, dict) and init.get("type") == "Pretrained"):
                backbone["pos_embed_type"] = "sincos"
                self.note("model.backbone.pos_embed_type = \"sincos\" (MMSelfSup 0.x's VisionTransformer always "
                          "used a fixed 2-d sin-cos position embedding)")

    # components -----------------------------------------------------------------------------
    def component(self, table: dict[str, Any], kind: str | None, path: tuple[Any, ...]) -> dict[str, Any]:
        """Convert one typed table of ``kind`` (None: any kind) found at ``path``."""
        special = {"necks": self.neck, "datasets": self.dataset, "data_sources": self.data_source,
                   "hooks": self.hook, "backbones": self.backbone}
        if kind in special:
            return special[kind](table, path)
        return self.generic(table, kind, path)

    def generic(self, table: Mapping[str, Any], kind: str | None, path: tuple[Any, ...]) -> dict[str, Any]:
        """Rename the type, drop obsolete arguments and convert the nested components."""
        old = table.get("type")
        new = RENAMES.get(kind or "", {}).get(old, old) if isinstance(old, str) else old
        if isinstance(new, str):
            self.refuse_import_path(kind, new, path)
        result: dict[str, Any] = {"type": new} if "type" in table else {}
        for key, value in table.items():
            if key == "type":
                continue
            reason = OBSOLETE_TYPE_ARGS.get((new, key)) or OBSOLETE_ARGS.get(key)
            if reason:
                self.drop([*path, key], reason)
                continue
            result[key] = self.child(key, value, (*path, key))
        if isinstance(new, str):
            self.check_installed(kind, new, path)
        return result

    def child(self, key: Any, value: Any, path: tuple[Any, ...]) -> Any:
        """Convert an argument value: typed tables and pipelines become ours, ``*_cfg`` stay."""
        if isinstance(key, str) and key.endswith("_cfg"):
            return value
        kind = key_kind(key)
        if isinstance(value, dict) and "type" in value:
            return self.component(value, kind, path)
        if kind == "transforms" and isinstance(value, (list, tuple)):
            if value and all(isinstance(v, (list, tuple)) for v in value):
                return [self.pipeline(v, (*path, i)) for i, v in enumerate(value)]
            return self.pipeline(value, path)
        if isinstance(value, (list, tuple)) and any(isinstance(v, dict) and "type" in v for v in value):
            return [self.component(v, kind, (*path, i)) if isinstance(v, dict) and "type" in v else v
                    for i, v in enumerate(value)]
        if isinstance(value, dict):  # an untyped table (a hook's extractor ...): its datasets and pipelines too
            return {sub: self.child(sub, item, (*path, sub)) for sub, item in value.items()}
        return value

    def refuse_import_path(self, kind: str | None, name: str, path: tuple[Any, ...]) -> None:
        """A ``type`` that is an import path (``os:system``, ``pkg.mod.Class``) is never written:
        a config must not be able to run code. ``dist:Name`` of an installed component passes."""
        if (":" in name or "." in name) and not self.installed(kind, name):
            key = ".".join(str(p) for p in (*path, "type"))
            scope = name.split(".")[0]
            if ":" not in name and scope in OPENMMLAB_SCOPES:
                raise ConfigError(f"type {name!r} is a component of {scope} (another OpenMMLab library), which "
                                  "selfsup does not have: name an installed component ('selfsup-run list')",
                                  file=self.shown, key=key)
            raise ConfigError(f"type {name!r} is an import path, not a registered component; the migrator "
                              "never writes one (a config must not run code): name an installed component "
                              "('selfsup-run list')", file=self.shown, key=key)

    def check_installed(self, kind: str | None, name: str, path: tuple[Any, ...]) -> None:
        if not self.installed(kind, name):
            where = ".".join(str(p) for p in path)
            self.warnings.append(f"{where}: no selfsup component {name!r} is installed; kept as written")

    def backbone(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """mmcls' Swin ``stage_cfgs`` (``block_cfgs.window_size``) -> our ``window_size``."""
        table = dict(table)
        if table.get("type") in ("SwinTransformer", "SimMIMSwinTransformer") and "stage_cfgs" in table:
            self.swin_stage_cfgs(table, table.pop("stage_cfgs"), (*path, "stage_cfgs"))
        return self.generic(table, "backbones", path)

    def swin_stage_cfgs(self, table: dict[str, Any], stages: Any, path: tuple[Any, ...]) -> None:
        """Fold ``stage_cfgs`` (one dict for every stage, or one per stage) into ``table``: the
        window size is ours; any other per-stage option has no equivalent and is dropped."""
        per_stage = list(stages) if isinstance(stages, (list, tuple)) else [stages]
        sizes = set()
        for i, stage in enumerate(per_stage):
            where = (*path, i) if isinstance(stages, (list, tuple)) else path
            if not isinstance(stage, dict):
                self.drop(where, "a stage's options must be a dict")
                continue
            for key, value in stage.items():
                if key == "block_cfgs" and isinstance(value, dict):
                    for sub, item in value.items():
                        if sub == "window_size":
                            sizes.add(item if not isinstance(item, list) else tuple(item))
                        else:
                            self.drop((*where, key, sub), "no per-block option of that name; every block of "
                                      "selfsup's Swin has the same settings")
                else:
                    self.drop((*where, key), "no per-stage option of that name in selfsup's Swin")
        if len(sizes) > 1:
            raise ConfigError(f"stages with different window sizes {sorted(sizes)} cannot be written: selfsup's "
                              "Swin takes one window_size", file=self.shown, key=".".join(map(str, path)))
        if sizes and "window_size" not in table:
            table["window_size"] = sizes.pop()
            self.note(f"{'.'.join(map(str, path))}.block_cfgs.window_size -> window_size = {table['window_size']}")

    def neck(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """OpenSelfSup necks -> ours, with the flags that give the same layers."""
        table = dict(table)
        old = table.get("type")
        sync_bn = table.pop("sync_bn", _ABSENT)
        norm = {"type": "SyncBN"} if sync_bn is True else {"type": "BN"}
        if old == "NonLinearNeckV0":
            table.setdefault("norm_cfg", norm)
        elif old == "NonLinearNeckV2":
            table.update(num_layers=2, with_bias=True, with_last_bn=False, with_last_bias=True)
            table.setdefault("norm_cfg", norm)
        elif old == "NonLinearNeckSimCLR":
            # OpenSelfSup: with_bias (default False) applies to every linear layer, the last
            # included; with_last_bn (default True) is an affine BN; SyncBN unless sync_bn=False.
            table.setdefault("num_layers", 2)
            table.setdefault("with_bias", False)
            table.setdefault("with_last_bn", True)
            table.update(with_last_bn_affine=True, with_last_bias=table["with_bias"])
            table.setdefault("norm_cfg", {"type": "BN"} if sync_bn is False else {"type": "SyncBN"})
        elif sync_bn is not _ABSENT:
            if sync_bn and "norm_cfg" not in table and old != "NonLinearNeckV1":
                table["norm_cfg"] = {"type": "SyncBN"}
            elif old == "NonLinearNeckV1":
                self.drop([*path, "sync_bn"], OBSOLETE_TYPE_ARGS[("MoCoV2Neck", "sync_bn")])
            elif not sync_bn and "norm_cfg" not in table:
                table["norm_cfg"] = {"type": "BN"}
        return self.generic(table, "necks", path)

    def dataset(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """OpenSelfSup / MMSelfSup datasets -> ours (ContrastiveDataset and BYOLDataset become
        MultiViewDataset with ``num_views`` and ``pipelines``)."""
        table = dict(table)
        old = table.get("type")
        if old == "ContrastiveDataset" and "pipeline" in table:
            table["num_views"] = [2]
            table["pipelines"] = [table.pop("pipeline")]
        elif old == "BYOLDataset" and "pipeline1" in table and "pipeline2" in table:
            table["num_views"] = [1, 1]
            table["pipelines"] = [table.pop("pipeline1"), table.pop("pipeline2")]
        if "num_views" in table and "pipelines" in table:
            table = {"type": table.pop("type"), "num_views": table.pop("num_views"), **table}
        return self.generic(table, "datasets", path)

    def data_source(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """Data sources: ImageNet/ImageList with a list file -> ImageList, without -> ImageFolder;
        CIFAR with ``root``/``split``."""
        table = dict(table)
        old = table.get("type")
        root = table.pop("root", None) if "root" in table else table.pop("data_prefix", None)
        if "root" in table or "data_prefix" in table:
            extra = "data_prefix" if "data_prefix" in table else "root"
            self.drop([*path, extra], "both root and data_prefix are given; root is used")
            table.pop(extra)
        listing = table.pop("list_file", None) or table.pop("ann_file", None)
        test_mode = table.pop("test_mode", None)
        new: dict[str, Any]
        if old in ("ImageNet", "ImageList", "Places205", "ImageNet21k", "ImageFolder"):
            if listing:
                new = {"type": "ImageList", "ann_file": listing}
                if root is not None:
                    new["root"] = root
            else:
                new = {"type": "ImageFolder", "root": root}
        elif old in ("Cifar10", "CIFAR10", "Cifar100", "CIFAR100"):
            new = {"type": RENAMES["data_sources"].get(old, old), "root": root}
            if test_mode is not None:
                table.setdefault("split", "test" if test_mode else "train")
            test_mode = None
            if listing:
                self.drop([*path, "ann_file"], "CIFAR sources read the official python batches")
        else:
            new = {"type": old}
            if root is not None:
                new["root"] = root
            if listing:
                new["ann_file"] = listing
        if test_mode is not None:
            self.drop([*path, "test_mode"], "the split is chosen by the data source's own arguments")
        for key, value in table.items():
            if key != "type":
                new[key] = value
        return self.generic(new, "data_sources", path)

    def pipeline(self, steps: Iterable[Any], path: tuple[Any, ...]) -> list[Any]:
        """A list of transforms (``ToTensor`` becomes two steps)."""
        result: list[Any] = []
        for i, step in enumerate(steps):
            if isinstance(step, dict) and "type" in step:
                result.extend(self.transform(step, (*path, i)))
            else:
                result.append(step)
        return result

    def transform(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> list[dict[str, Any]]:
        """One transform -> ours (one or more tables)."""
        table = dict(table)
        old = table.get("type")
        if old == "ToTensor":
            for key in table:
                if key != "type":
                    self.drop([*path, key], "ToTensor takes no arguments")
            return [{"type": "ToImage"}, {"type": "ToDtype", "dtype": "float32", "scale": True}]
        if old in ("GaussianBlur", "Solarization") and "p" not in table and self.dialect == OPENSELFSUP:
            table["p"] = 1.0
            self.note(f"{'.'.join(map(str, path))}: {old} p = 1.0 (OpenSelfSup's always applied; "
                      "RandomAppliedTrans gives the probability)")
        return [self.generic(table, "transforms", path)]

    def hook(self, table: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
        """A custom hook -> our trainer hook (our name and arguments only)."""
        old = table.get("type")
        spec = HOOKS.get(old) if isinstance(old, str) else None
        if spec is None:
            return self.generic(table, "hooks", path)
        candidates, accepted = spec
        name = next((c for c in candidates if self.installed("hooks", c)), candidates[0])
        result: dict[str, Any] = {"type": name}
        for key, value in table.items():
            if key == "type":
                continue
            if key in accepted:
                result[key] = self.hook_argument(name, key, value, (*path, key))
            else:
                self.drop([*path, key], OBSOLETE_ARGS.get(key) or f"not an argument of {name}")
        self.check_installed("hooks", name, path)
        return result

    def hook_argument(self, hook: str, key: str, value: Any, path: tuple[Any, ...]) -> Any:
        """DeepClusterHook's ``extractor``/``clustering`` tables keep only the keys ours read."""
        if key not in ("extractor", "clustering") or not isinstance(value, dict):
            return self.child(key, value, path)
        keys = EXTRACTOR_KEYS if key == "extractor" else CLUSTERING_KEYS
        result = {}
        for sub, item in value.items():
            if key == "extractor" and sub == "imgs_per_gpu":
                sub = "samples_per_gpu"
            if sub in keys:
                result[sub] = self.child(sub, item, (*path, sub))
            elif key == "clustering" and sub == "type":
                self.drop([*path, sub], f"{hook} always runs k-means (Kmeans)")
            else:
                self.drop([*path, sub], OBSOLETE_ARGS.get(sub) or f"{hook} {key} takes {', '.join(keys)}")
        return result

    # data -----------------------------------------------------------------------------------
    def data(self, table: Any) -> None:
        """``data = dict(imgs_per_gpu=..., workers_per_gpu=..., train=dict(...))`` -> ``[data]``."""
        out = self.section("data")
        if not isinstance(table, dict):
            self.out["data"] = table
            return
        known = ("samples_per_gpu", "workers_per_gpu", "drop_last", "pin_memory", "persistent_workers",
                 "prefetch_factor", "replace")
        for key, value in table.items():
            if key == "imgs_per_gpu":
                out["samples_per_gpu"] = value
            elif key in known:
                out[key] = value
            elif key in ("train", "val", "test") and isinstance(value, dict):
                out[key] = self.component(value, "datasets", ("data", key))
            elif key == "sampling_replace":
                out["replace"] = value
                self.note("data.sampling_replace -> data.replace (sampling with replacement)")
            else:
                self.drop(["data", key], OBSOLETE_ARGS.get(key) or "not a [data] setting")

    # optimisation -----------------------------------------------------------------------------
    def optimizer(self, table: Any) -> None:
        """``optimizer`` carries over (``paramwise_options`` included); mmcv's constructor keys drop."""
        if not isinstance(table, dict):
            self.out["optimizer"] = table
            return
        out = self.section("optimizer")
        for key, value in table.items():
            if key == "constructor":
                self.drop(["optimizer", key], "one optimizer builder; see paramwise_options")
            elif key == "paramwise_cfg":
                self.drop(["optimizer", key], "mmcv's paramwise_cfg is not read; write paramwise_options "
                                              "(regex -> options) or exclude_bias_and_norm = true")
            else:
                out[key] = value

    def optimizer_config(self, table: Any) -> None:
        """``update_interval``/``cumulative_iters`` -> ``accumulate_steps``; ``grad_clip``;
        ``use_fp16`` -> ``runner.precision``; the rest drops."""
        if not isinstance(table, dict):
            return self.drop(["optimizer_config"], "must be a dict")
        out = self.section("optimizer_config")
        for key, value in table.items():
            path = ["optimizer_config", key]
            if key in ("update_interval", "cumulative_iters"):
                out["accumulate_steps"] = value
            elif key == "grad_clip":
                self.grad_clip(value, out)
            elif key == "frozen_layers_cfg":
                self.frozen_layers = value
            elif key == "use_fp16":
                if value:
                    self.section("runner")["precision"] = "fp16"
                else:
                    self.drop(path, "False: the default precision applies")
            elif key == "type":
                self.drop(path, "the trainer owns the optimizer step (accumulation, clipping, fp16)")
            else:
                self.drop(path, "no such option (coalescing and buckets are DDP's own)"
                          if key in ("coalesce", "bucket_size_mb") else "not an optimizer_config setting")

    def grad_clip(self, value: Any, out: dict[str, Any]) -> None:
        if value is None:
            self.drop(["optimizer_config", "grad_clip"], "None: no clipping (the default)")
            return
        if not isinstance(value, dict):
            out["grad_clip"] = value
            return
        clip = {}
        for key, item in value.items():
            if key in ("max_norm", "norm_type"):
                clip[key] = item
            else:
                self.drop(["optimizer_config", "grad_clip", key], "grad_clip takes max_norm and norm_type")
        out["grad_clip"] = clip

    def lr_config(self, table: Any) -> None:
        """``lr_config`` keeps the keys its policy reads; an unknown policy is kept with a warning."""
        if not isinstance(table, dict):
            self.out["lr_config"] = table
            return
        table = dict(table)
        policy = str(table.get("policy", "")).lower()
        if policy not in LR_POLICIES:
            known = ", ".join(sorted(set(LR_POLICIES.values())))
            self.warnings.append(f"lr_config.policy: {table.get('policy')!r} is not a selfsup lr policy "
                                 f"({known}); kept as written")
            self.out["lr_config"] = dict(table)
            return
        accepted = (*LR_COMMON_KEYS, *LR_POLICY_KEYS[LR_POLICIES[policy]])
        out = self.section("lr_config")
        for key, value in table.items():
            if key in accepted:
                out[key] = value
            else:
                self.drop(["lr_config", key], f"not read by the {table['policy']!r} policy")

    # runtime --------------------------------------------------------------------------------
    def runner(self, table: Any) -> None:
        """``runner = dict(type='EpochBasedRunner', max_epochs=N)`` -> ``[runner]``."""
        if not isinstance(table, dict):
            return self.drop(["runner"], "must be a dict")
        out = self.section("runner")
        for key, value in table.items():
            if key == "max_epochs":
                out["max_epochs"] = value
            elif key == "type" and value == "EpochBasedRunner":
                out["type"] = value
            elif key == "type" or key == "max_iters":
                self.drop(["runner", key], "training is epoch based; set [runner] max_epochs")
                self.warnings.append(f"runner.{key} = {value!r}: only epoch-based training exists; "
                                     "set [runner] max_epochs")
            else:
                self.drop(["runner", key], "not a [runner] setting")

    def total_epochs(self, value: Any) -> None:
        runner = self.cfg.get("runner")
        if isinstance(runner, dict) and "max_epochs" in runner:
            self.drop(["total_epochs"], "runner.max_epochs is given too and wins")
        else:
            self.section("runner")["max_epochs"] = value

    def fp16(self, table: Any) -> None:
        """``fp16 = dict(loss_scale=...)`` -> ``runner.precision = "fp16"``."""
        if table is None:
            return self.drop(["fp16"], "None (not set)")
        self.section("runner")["precision"] = "fp16"
        if isinstance(table, dict):
            for key in table:
                self.drop(["fp16", key], "the gradient scaler scales the loss dynamically")

    def checkpoint_config(self, table: Any) -> None:
        if not isinstance(table, dict):
            return self.drop(["checkpoint_config"], "must be a dict")
        out = self.section("checkpoint_config")
        for key, value in table.items():
            if key in ("interval", "max_keep_ckpts"):
                out[key] = value
            else:
                self.drop(["checkpoint_config", key], "checkpoints are saved every interval epochs with the full "
                          "training state, in the work dir" if key != "by_epoch" else "checkpoints are per epoch")

    def log_config(self, table: Any) -> None:
        """``interval`` carries over; TensorboardLoggerHook -> ``tensorboard = true``."""
        if not isinstance(table, dict):
            return self.drop(["log_config"], "must be a dict")
        out = self.section("log_config")
        for key, value in table.items():
            if key == "interval":
                out["interval"] = value
            elif key == "hooks" and isinstance(value, (list, tuple)):
                self.logger_hooks(value, out)
            else:
                self.drop(["log_config", key], "not a [log_config] setting")

    def logger_hooks(self, hooks: Iterable[Any], out: dict[str, Any]) -> None:
        for i, hook in enumerate(hooks):
            name = hook.get("type") if isinstance(hook, dict) else hook
            if name == "TensorboardLoggerHook":
                out["tensorboard"] = True
            else:
                why = ("the trainer always shows progress and writes metrics.jsonl" if name == "TextLoggerHook"
                       else "no such logger; loggers are plugins in the selfsup.plugins group")
                self.drop(["log_config", "hooks", i], f"{name}: {why}")

    def custom_hooks(self, hooks: Any) -> None:
        """``custom_hooks = [dict(type=...), ...]`` -> ``[[hooks]]``."""
        if not isinstance(hooks, (list, tuple)):
            return self.drop(["custom_hooks"], "must be a list of dicts")
        out = self.out.setdefault("hooks", [])
        for i, hook in enumerate(hooks):
            name = hook.get("type") if isinstance(hook, dict) else None
            if name in DROPPED_HOOKS:
                self.drop(["custom_hooks", i], f"{name}: {DROPPED_HOOKS[name]}")
            elif isinstance(hook, dict):
                out.append(self.hook(hook, ("custom_hooks", i)))
            else:
                self.drop(["custom_hooks", i], "not a dict with a type")
        if not out:
            del self.out["hooks"]


_ABSENT: Any = object()


def key_kind(key: Any) -> str | None:
    """The component kind a typed table under ``key`` has (build's rule, plus old keys)."""
    from selfsup_core.api import kind_for_key

    if key in EXTRA_KEY_KINDS:
        return EXTRA_KEY_KINDS[key]
    return kind_for_key(key)


def detect_dialect(cfg: Mapping[str, Any]) -> str:
    """``OpenSelfSup`` when the config uses its vocabulary (``total_epochs``, old dataset,
    neck or algorithm names, ``list_file``), else ``MMSelfSup 0.x``."""
    if "total_epochs" in cfg:
        return OPENSELFSUP
    old_names = {"MOCO", "ContrastiveDataset", "BYOLDataset", "NPIDDataset", "ExtractDataset",
                 "ClassificationDataset", "NonLinearNeckV0", "NonLinearNeckV1", "NonLinearNeckV2",
                 "NonLinearNeckSimCLR", "BYOLHook"}
    found: list[bool] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") in old_names or "list_file" in value:
                found.append(True)
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk({k: cfg[k] for k in ("model", "data", "custom_hooks") if k in cfg})
    return OPENSELFSUP if found else MMSELFSUP


def clean(value: Any, path: tuple[Any, ...], migration: Migration) -> Any:
    """``value`` as TOML data: tuples and sets become lists, ``None`` values are dropped (and
    reported), dict keys become strings."""
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if item is None:
                migration.drop([*path, key], "None cannot be written in TOML; the default applies")
                continue
            result[str(key)] = clean(item, (*path, key), migration)
        return result
    if isinstance(value, (list, tuple)):
        items = [clean(item, (*path, i), migration) for i, item in enumerate(value)]
        if any(item is None for item in items):
            raise ConfigError("a list holds None, which TOML cannot write", key=".".join(map(str, path)))
        return items
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return value


#: Self-supervised algorithms of MMSelfSup 0.x / OpenSelfSup that selfsup does not ship (yet):
#: refused as "not implemented" unless an installed plugin provides one of that name.
NOT_IMPLEMENTED = ("BEiT", "MixMIM", "MILAN", "EVA", "DINO", "ORL",
                   "SparK", "PixMIM")
#: Model types of the benchmark configs (classification, detection, segmentation).
CLASSIFIERS = ("Classification", "ImageClassifier", "MMClsImageClassifierWrapper", "LinearClassifier")
DENSE_MODELS = ("MaskRCNN", "FasterRCNN", "RetinaNet", "CascadeRCNN", "MaskScoringRCNN", "EncoderDecoder",
                "CascadeEncoderDecoder", "GeneralizedRCNN")


def refusal_for_model(old: str) -> str:
    """Why a config whose ``model.type`` is ``old`` (no installed algorithm) is refused, and
    what to use instead (one line)."""
    if old in NOT_IMPLEMENTED:
        return (f"{old!r}: the {old} algorithm is not implemented in selfsup yet (no installed plugin provides "
                f"an algorithm {old!r}; 'selfsup-run list algorithms' shows what is installed)")
    if old in CLASSIFIERS:
        return (f"{old!r} is a classification benchmark's model (linear probe / fine-tuning), not a pre-training "
                "algorithm; evaluate a pre-trained checkpoint with 'selfsup-run eval CONFIG --checkpoint CKPT' "
                "(kNN, linear probe)")
    if old in DENSE_MODELS or old.endswith(("RCNN", "EncoderDecoder")):
        return (f"{old!r} is a detection / segmentation benchmark's model (run by MMDetection / MMSegmentation, "
                "not by selfsup); export the pre-trained backbone with 'selfsup-run export'")
    if ":" in old or "." in old:
        return (f"{old!r} is an import path, not a registered algorithm; the migrator never writes one "
                "(a config must not run code)")
    return (f"no installed algorithm is called {old!r} ('selfsup-run list algorithms' shows what is installed; "
            "benchmarks are run with 'selfsup-run eval')")


def installed_components() -> Callable[[str | None, str], bool]:
    """``installed(kind, name)``: whether a component is installed (metadata only, no import).

    ``dist:Name`` counts when the installed distribution ``dist`` provides ``Name``; an import
    path (``os:system``, ``pkg.mod.Class``) never does.
    """
    from selfsup_core.api import registry as _registry
    from selfsup_core.api import session as _session

    registries = _session.registries()

    def installed(kind: str | None, name: str) -> bool:
        kinds = [kind] if kind else list(_registry.KINDS)
        dist, sep, rest = name.partition(":")
        if sep:
            wanted = _registry.normalize_name(dist)
            return any(c.name == rest and _registry.normalize_name(c.dist) == wanted
                       for k in kinds for c in registries[k].components())
        return any(name in registries[k] for k in kinds)

    return installed


# -- output ------------------------------------------------------------------------------------------
def render(data: dict[str, Any], migration: Migration, files: list[str], command: str) -> str:
    """The TOML text: a comment header (source, bases, command), the data, the dropped keys."""
    source, bases = files[0], files[1:]
    header = [f"# Migrated from {source} ({migration.dialect} Python config) by:", f"#   {command}"]
    if bases:
        header.append("# _base_ files read (in order): " + ", ".join(bases))
    header.append("# The Python file was parsed, not run. Review the dropped keys at the end.")
    lines = [*header, "", dump_toml(data).rstrip("\n"), ""]
    if migration.drops:
        lines += ["# Dropped keys (not carried over):"]
        lines += [f"#   dropped {key}: {why}" for key, why in migration.drops]
    if migration.warnings:
        lines += ["# Warnings:"] + [f"#   {w}" for w in migration.warnings]
    return "\n".join(lines).rstrip("\n") + "\n"


def report_lines(migration: Migration) -> list[str]:
    """The stderr report: ``dropped KEY: WHY``, ``warning: ...`` and ``note: ...`` lines."""
    return ([f"dropped {key}: {why}" for key, why in migration.drops]
            + [f"warning: {w}" for w in migration.warnings] + [f"note: {n}" for n in migration.notes])


def migrate_file(path: str | os.PathLike[str], command: str,
                 installed: Callable[[str | None, str], bool] | None = None) -> tuple[str, Migration]:
    """Parse and convert one Python config; returns ``(TOML text, the Migration with its report)``."""
    loaded = load_python_config(path)
    migration = Migration(loaded.data, installed or installed_components(), display_path(Path(path)))
    data = migration.convert()
    return render(data, migration, loaded.files, command), migration


def command_line(args: argparse.Namespace) -> str:
    """The command as the user gave it (for the header)."""
    parts = ["selfsup-run", "migrate", str(args.old_config)]
    if getattr(args, "out", None):
        parts += ["-o", str(args.out)]
    parts += [flag for flag, on in (("--force", getattr(args, "force", False)),
                                    ("--check", getattr(args, "check", False))) if on]
    return " ".join(parts)


def paramwise_differences(names: Iterable[str], table: Mapping[str, Mapping[str, Any]], limit: int = 5) -> list[str]:
    """Where mmcv's and our reading of ``paramwise_options`` give a parameter other options.

    MMSelfSup 0.x / OpenSelfSup apply every expression that matches a parameter name, in
    order (a later one overrides a key); selfsup applies the first match only. ``names``:
    the model's parameter names. Returns one line per differing parameter (up to ``limit``,
    then a count).
    """
    import re

    rules = [(re.compile(pattern), dict(options)) for pattern, options in table.items()]
    lines: list[str] = []
    differing = 0
    for name in names:
        matched = [options for regex, options in rules if regex.search(name)]
        theirs: dict[str, Any] = {}
        for options in matched:
            theirs.update(options)
        ours = matched[0] if matched else {}
        if theirs != ours:
            differing += 1
            if len(lines) < limit:
                lines.append(f"{name}: the old config gave {theirs}, this one gives {ours}")
    if differing > limit:
        lines.append(f"... and {differing - limit} more parameters")
    return lines


def warn_paramwise(path: Path) -> None:
    """After a successful check: build the model of ``path`` and print a warning per
    parameter whose ``optimizer.paramwise_options`` differ under our first-match rule."""
    from selfsup_core.api import build_model, load_config

    config = load_config(path)
    table = config.data.get("optimizer", {}).get("paramwise_options")
    if not isinstance(table, dict) or len(table) < 2:
        return
    names = [name for name, _ in build_model(config).named_parameters()]
    differences = paramwise_differences(names, table)
    if differences:
        print("warning: optimizer.paramwise_options: MMSelfSup applied every matching expression (later ones "
              "override), selfsup applies the first match only; reorder or merge the expressions:", file=sys.stderr)
        for line in differences:
            print(f"warning:   {line}", file=sys.stderr)


def check(path: Path, to_stderr: bool) -> int:
    """Run ``selfsup-run PATH --check`` in this process; returns its exit status."""
    from selfsup_core.api import cli_main

    target = sys.stderr if to_stderr else sys.stdout
    with contextlib.redirect_stdout(target):
        return cli_main([str(path), "--check"])


def run(args: argparse.Namespace) -> int:
    """The ``migrate`` command: ``args.old_config``, ``args.out`` (None: print the TOML),
    ``args.force`` and ``args.check``. Returns the exit status; user errors raise ConfigError."""
    source = Path(args.old_config)
    out = Path(args.out) if getattr(args, "out", None) else None
    if out is not None and out.exists() and not getattr(args, "force", False):
        raise ConfigError(f"{display_path(out)} exists; pass --force to overwrite it")
    if not source.is_file():
        raise ConfigError(f"config file not found ({os.path.abspath(source)})", file=display_path(source))
    text, migration = migrate_file(source, command_line(args))
    for line in report_lines(migration):
        print(line, file=sys.stderr)
    if out is not None:
        if out.is_dir():
            raise ConfigError(f"{display_path(out)} is a directory; give a .toml file name")
        atomic_write_text(out, text)
        print(f"wrote {display_path(out)}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    if not getattr(args, "check", False):
        return 0
    if out is not None:
        status = check(out, to_stderr=False)
        if status == 0:
            warn_paramwise(out)
        return status
    with tempfile.TemporaryDirectory() as folder:
        temp = Path(folder) / f"{source.stem}.toml"
        temp.write_text(text, encoding="utf-8")
        status = check(temp, to_stderr=True)
        if status == 0:
            warn_paramwise(temp)
        return status


__all__ = ["Migration", "RENAMES", "detect_dialect", "migrate_file", "paramwise_differences", "run"]
