"""Build an optimizer from the ``[optimizer]`` config table (MMSelfSup 0.x vocabulary).

::

    [optimizer]
    type = "LARS"                 # "SGD", "AdamW", "Adam", "LARS" or any torch.optim class
    lr = 0.3
    momentum = 0.9
    weight_decay = 1e-6
    exclude_bias_and_norm = true  # no weight decay and no LARS trust ratio for biases,
                                  # normalisation-layer parameters and every 1-d parameter
    [optimizer.paramwise_options]
    "(bn|gn)(\\d+)?.(weight|bias)" = {weight_decay = 0.0, lars_exclude = true}
    "bias" = {weight_decay = 0.0, lars_exclude = true}

Every other key is an argument of the optimizer class and is checked against its
constructor before anything is built.

``paramwise_options`` maps regular expressions to options. Each expression is searched
(``re.search``) in the full parameter name (``backbone.layer1.0.bn1.weight``); the
expressions are tried in table order and the FIRST one that matches gives the options of
that parameter (later matches are ignored). Options:

* ``weight_decay``: the weight decay of the parameter (replaces the optimizer's);
* ``decay_mult``: multiplies the weight decay (after ``weight_decay`` if both are given);
* ``lr_mult``: multiplies the learning rate;
* ``momentum``: the momentum of the parameter (optimizers that take ``momentum`` only);
* ``lars_exclude``: true skips the LARS trust ratio (ignored by other optimizers);
* ``fix_lr``: true puts the parameters in param groups of their own marked
  ``fix_lr = True``, for a trainer hook that keeps their lr fixed (MMSelfSup 0.x's
  ``SimSiamHook``; the lr schedule itself sets every group).

``exclude_bias_and_norm = true`` gives ``weight_decay = 0`` and ``lars_exclude = true`` to
parameters of normalisation layers (BatchNorm, SyncBatchNorm, InstanceNorm, GroupNorm,
LayerNorm, RMSNorm, found by module type), to parameters named ``bias`` and to every
parameter with at most one dimension; options set explicitly by a matching
``paramwise_options`` expression win over it.

``layer_decay_rate`` (with optional ``num_layers``) is layer-wise lr decay for ViT
fine-tuning (BEiT/MAE rule). Layer ids: ``patch_embed`` and the tokens / position embedding
(``cls_token``, ``pos_embed``, ``mask_token``, ``dist_token``) -> 0, ``blocks.<i>.`` or
``layers.<i>.`` -> i + 1, everything else (final norm, head) -> ``num_layers + 1``;
the lr multiplier is ``layer_decay_rate ** (num_layers + 1 - layer_id)``, multiplied with
any ``lr_mult``. ``num_layers`` defaults to the number of ``blocks.<i>`` / ``layers.<i>``
found. With layer decay, 1-d parameters (biases, norms) and the tokens / position
embeddings get no weight decay, as in BEiT and MAE (an explicit ``paramwise_options``
``weight_decay`` still wins).

Parameters with ``requires_grad = False`` are left out. Parameters with identical options
are merged into one group, so there are few groups and torch's multi-tensor (``foreach``)
kernels, which it picks by default on GPUs, stay effective.

Keys of every param group (the schedules read them)
----------------------------------------------------
* ``lr_mult``: the product of ``lr_mult`` and the layer-decay scale (1.0 by default);
* ``initial_lr``: the group's base learning rate, ``optimizer lr * lr_mult``; the lr
  schedule sets ``group["lr"] = schedule.lr_at(iteration, group["initial_lr"])``, which is
  ``initial_lr * factor`` for every schedule whose minimum is relative (MMCV's rule: an
  absolute ``min_lr`` is the floor of every group);
* ``lr``: starts at ``initial_lr``;
* ``weight_decay``: the group's weight decay after ``weight_decay``/``decay_mult``;
* ``lars_exclude``: bool, True when the LARS trust ratio is skipped;
* ``fix_lr``: True where a paramwise option set ``fix_lr = true`` (absent otherwise);
* ``momentum`` where a paramwise option sets it.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from ..build import accepted_parameters, annotations, describe_value, required_parameters, type_matches, type_text
from ..config import Config
from ..errors import Problems, describe_exception, did_you_mean
from .runtime import unwrap

__all__ = [
    "PARAMWISE_OPTIONS",
    "build_optimizer",
    "layer_id_for_vit",
    "optimizer_class",
]

#: Options a ``paramwise_options`` entry may set, and the Python types each accepts.
PARAMWISE_OPTIONS: dict[str, tuple[type, ...]] = {
    "weight_decay": (int, float),
    "lr_mult": (int, float),
    "decay_mult": (int, float),
    "lars_exclude": (bool,),
    "fix_lr": (bool,),
    "momentum": (int, float),
}
#: Keys of ``[optimizer]`` that the builder reads itself (not optimizer arguments).
BUILDER_KEYS = ("type", "paramwise_options", "exclude_bias_and_norm", "layer_decay_rate", "num_layers")

_NORM_TYPES: tuple[type, ...] = tuple(
    t for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
        nn.GroupNorm,
        nn.LayerNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    ) if t is not None
)
_BLOCK_ID = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.")
_TOKEN_NAMES = frozenset({"cls_token", "pos_embed", "mask_token", "dist_token"})


def optimizer_class(name: str, registries: Any = None) -> Optional[type]:
    """The optimizer class called ``name``: a registered optimizer (entry-point group
    ``selfsup.optimizers``: selfsup-models's ``LARS``, or another plugin's), else a ``torch.optim`` class;
    None when neither has it. ``registries``: where to look (None: the registries in use)."""
    from .. import session as _session

    registered = (registries if registries is not None else _session.registries())["optimizers"]
    if name in registered:
        return registered.lookup(name).load()
    found = getattr(torch.optim, name, None)
    if inspect.isclass(found) and issubclass(found, torch.optim.Optimizer) and found is not torch.optim.Optimizer:
        return found
    return None


def _known_optimizers(registries: Any = None) -> list[str]:
    from .. import session as _session

    registered = (registries if registries is not None else _session.registries())["optimizers"].names()
    return registered + sorted(n for n in dir(torch.optim) if n not in registered and optimizer_class(n, registries) is not None)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def layer_id_for_vit(name: str, num_layers: int) -> int:
    """Layer id of a ViT parameter name for layer-wise lr decay (BEiT/MAE rule).

    ``patch_embed`` and tokens / position embedding -> 0, ``blocks.<i>.`` or ``layers.<i>.``
    -> ``i + 1``, anything else -> ``num_layers + 1``.
    """
    last = name.rsplit(".", 1)[-1]
    if last in _TOKEN_NAMES or re.search(r"(?:^|\.)patch_embed(?:\.|$)", name):
        return 0
    match = _BLOCK_ID.search(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def _excluded_by_flag(model: nn.Module) -> set[int]:
    """ids of the parameters ``exclude_bias_and_norm`` applies to."""
    ids: set[int] = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for param_name, param in module.named_parameters(recurse=False):
            if is_norm or param_name == "bias" or param.ndim <= 1:
                ids.add(id(param))
    return ids


def build_optimizer(
    model: nn.Module,
    cfg: Mapping[str, Any],
    *,
    config: Optional[Config] = None,
    path: tuple = ("optimizer",),
    registries: Any = None,
) -> torch.optim.Optimizer:
    """Build the optimizer the ``[optimizer]`` table ``cfg`` describes for ``model``.

    Args:
        model: the module whose trainable parameters are optimised (a DDP/DataParallel
            wrapper is unwrapped, so parameter names never start with ``module.``).
        cfg: the ``[optimizer]`` table (see the module docstring for its keys).
        config: the whole config, used only to name the file a bad key came from.
        path: the key path of ``cfg`` inside the config, for error messages.
        registries: where a registered optimizer type is looked up (None: the registries in use).

    Returns:
        The optimizer, its param groups carrying the keys listed in the module docstring.

    Raises:
        ConfigError: unknown ``type`` (with a did-you-mean), an argument the optimizer does not
            take, a missing required argument, a wrong value type, a bad paramwise option or
            regular expression, or a value the optimizer rejects; each problem names the file
            and the dotted key.
    """
    problems = Problems(config, path)
    cfg = _as_table(cfg, problems)
    type_name, klass = _resolve_class(cfg, problems, registries)
    args = {k: v for k, v in cfg.items() if k not in BUILDER_KEYS}
    _check_arguments(klass, type_name, args, problems)
    rules = _parse_paramwise(cfg.get("paramwise_options"), klass, problems)
    exclude_flag = _read_exclude_flag(cfg, problems)
    layer_decay, num_layers = _read_layer_decay(cfg, problems)
    problems.raise_if_any()

    model = unwrap(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layer_decay is not None and num_layers is None:
        num_layers = _count_layers(named, problems)
    base_lr, base_wd = _base_lr_and_weight_decay(klass, args)
    rule = _GroupRule(rules, _excluded_by_flag(model) if exclude_flag else set(), layer_decay, num_layers)
    groups = _param_groups(named, rule, base_lr, base_wd)
    if not groups:
        problems.add((), f"the model has no trainable parameters for {type_name} to optimise")
        problems.raise_if_any()
    return _construct(klass, type_name, groups, args, problems)


def _as_table(cfg: Any, problems: Problems) -> dict[str, Any]:
    """``cfg`` as a dict; a non-table is reported (and raised) at once."""
    if not isinstance(cfg, Mapping):
        problems.add((), f"must be a table with a 'type', got {describe_value(cfg)}")
        problems.raise_if_any()
    return dict(cfg)


def _resolve_class(cfg: Mapping[str, Any], problems: Problems, registries: Any = None) -> tuple[str, type]:
    """``(type, class)`` of the optimizer ``cfg["type"]`` names (a registered optimizer or a
    ``torch.optim`` class); a missing, non-string or unknown type is raised at once."""
    type_name = cfg.get("type")
    klass: Optional[type] = None
    if not isinstance(type_name, str):
        problems.add(("type",) if "type" in cfg else (),
                     "missing optimizer 'type' (e.g. \"SGD\", \"AdamW\", \"LARS\")" if type_name is None
                     else f"must be a string naming an optimizer, got {describe_value(type_name)}")
    else:
        klass = optimizer_class(type_name, registries)
        if klass is None:
            known = _known_optimizers(registries)
            problems.add(("type",), f"unknown optimizer type {type_name!r}{did_you_mean(type_name, known)}"
                         " (a registered optimizer, see selfsup-run list optimizers, or a torch.optim class name)")
    problems.raise_if_any()
    assert klass is not None and isinstance(type_name, str)
    return type_name, klass


def _read_exclude_flag(cfg: Mapping[str, Any], problems: Problems) -> Any:
    """``exclude_bias_and_norm`` (false when absent); a non-boolean is reported."""
    exclude_flag = cfg.get("exclude_bias_and_norm", False)
    if not isinstance(exclude_flag, bool):
        problems.add(("exclude_bias_and_norm",), f"must be true or false, got {describe_value(exclude_flag)}")
    return exclude_flag


def _read_layer_decay(cfg: Mapping[str, Any], problems: Problems) -> tuple[Any, Any]:
    """``(layer_decay_rate, num_layers)`` as given (None when absent), bad values reported."""
    layer_decay = cfg.get("layer_decay_rate")
    num_layers = cfg.get("num_layers")
    if layer_decay is not None and (not _is_number(layer_decay) or not 0 < layer_decay <= 1):
        problems.add(("layer_decay_rate",), f"must be a number in (0, 1], got {describe_value(layer_decay)}")
    if num_layers is not None:
        if layer_decay is None:
            problems.add(("num_layers",), "is only used with layer_decay_rate; set layer_decay_rate or remove it")
        elif not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
            problems.add(("num_layers",), f"must be an integer >= 0, got {describe_value(num_layers)}")
    return layer_decay, num_layers


def _count_layers(named: list[tuple[str, nn.Parameter]], problems: Problems) -> int:
    """``num_layers`` for layer decay when not given: 1 + the largest ``blocks.<i>`` /
    ``layers.<i>`` index; none found is raised at once."""
    ids = {int(m.group(1)) for n, _ in named for m in [_BLOCK_ID.search(n)] if m}
    if not ids:
        problems.add(("layer_decay_rate",), "found no parameter named blocks.<i>. or layers.<i>. "
                     "to count the layers; set num_layers")
        problems.raise_if_any()
    return max(ids) + 1


def _base_lr_and_weight_decay(klass: type, args: Mapping[str, Any]) -> tuple[Optional[float], float]:
    """The optimizer's lr (None when it has none) and weight decay: the table's value, else
    the constructor's default."""
    params = inspect.signature(klass).parameters
    base_lr = args.get("lr", params["lr"].default if "lr" in params else None)
    if not _is_number(base_lr):
        base_lr = None
    base_wd = args.get("weight_decay", params["weight_decay"].default if "weight_decay" in params else 0.0)
    if not _is_number(base_wd):
        base_wd = 0.0
    return base_lr, base_wd


class _GroupRule:
    """Which param group a parameter joins: its ``paramwise_options`` match, the
    ``exclude_bias_and_norm`` exclusion and the layer-wise lr decay."""

    def __init__(self, rules: list[tuple[str, re.Pattern, dict[str, Any]]], flagged: set[int],
                 layer_decay: Any, num_layers: Any) -> None:
        self.rules, self.flagged, self.layer_decay, self.num_layers = rules, flagged, layer_decay, num_layers

    def options(self, name: str) -> dict[str, Any]:
        """The options of the first ``paramwise_options`` expression found in ``name``."""
        return next((opts for _regex, compiled, opts in self.rules if compiled.search(name)), {})

    def key(self, name: str, param: nn.Parameter, base_wd: float) -> tuple:
        """``(lr_mult, weight_decay, lars_exclude, momentum, fix_lr)`` of one parameter."""
        options = self.options(name)
        lr_mult = float(options.get("lr_mult", 1.0))
        weight_decay = float(options.get("weight_decay", base_wd))
        lars_exclude = bool(options.get("lars_exclude", False))
        if id(param) in self.flagged:
            weight_decay = weight_decay if "weight_decay" in options else 0.0
            lars_exclude = lars_exclude if "lars_exclude" in options else True
        if self.layer_decay is not None:
            layer_id = layer_id_for_vit(name, self.num_layers)
            lr_mult *= float(self.layer_decay) ** (self.num_layers + 1 - layer_id)
            if "weight_decay" not in options and (param.ndim <= 1 or name.rsplit(".", 1)[-1] in _TOKEN_NAMES):
                weight_decay = 0.0
        weight_decay *= float(options.get("decay_mult", 1.0))
        return lr_mult, weight_decay, lars_exclude, options.get("momentum"), bool(options.get("fix_lr", False))


def _param_groups(named: list[tuple[str, nn.Parameter]], rule: _GroupRule, base_lr: Optional[float],
                  base_wd: float) -> list[dict[str, Any]]:
    """The param groups: parameters with identical options share one group, in first-seen order."""
    groups: dict[tuple, dict[str, Any]] = {}
    for name, param in named:
        key = rule.key(name, param, base_wd)
        if key not in groups:
            groups[key] = _new_group(key, base_lr)
        groups[key]["params"].append(param)
    return list(groups.values())


def _new_group(key: tuple, base_lr: Optional[float]) -> dict[str, Any]:
    """An empty param group for the options ``key`` (see :meth:`_GroupRule.key`)."""
    lr_mult, weight_decay, lars_exclude, momentum, fix_lr = key
    group: dict[str, Any] = {"params": [], "lr_mult": lr_mult, "weight_decay": weight_decay,
                             "lars_exclude": lars_exclude}
    if base_lr is not None:
        group["lr"] = group["initial_lr"] = base_lr * lr_mult
    if momentum is not None:
        group["momentum"] = float(momentum)
    if fix_lr:
        group["fix_lr"] = True
    return group


def _construct(klass: type, type_name: str, groups: list[dict[str, Any]], args: Mapping[str, Any],
               problems: Problems) -> torch.optim.Optimizer:
    """The optimizer over ``groups`` (TOML arrays become tuples); a value it rejects is raised
    as a problem; every group gets ``initial_lr``."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
    try:
        optimizer = klass(groups, **kwargs)
    except (ValueError, TypeError) as exc:
        problems.add((), f"{type_name} rejects these arguments: {describe_exception(exc)}")
        problems.raise_if_any()
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return optimizer


def _check_arguments(klass: type, type_name: str, args: Mapping[str, Any], problems: Problems) -> None:
    """Report the optimizer arguments in ``args`` that ``klass`` does not take, the required
    ones missing, and those of the wrong type (in that order)."""
    params, open_ended = accepted_parameters(klass)
    params = {k: v for k, v in params.items() if k != "params"}
    if not open_ended:
        for key in args:
            if key not in params:
                hint = did_you_mean(key, [*params, *BUILDER_KEYS]) or f"; it takes {', '.join(params)}"
                problems.add((key,), f"unknown argument of optimizer {type_name}{hint}")
    for name in required_parameters(klass):
        if name != "params" and name not in args:
            problems.add((), f"missing required argument {name!r} of optimizer {type_name}")
    hints = annotations(klass)
    for key, value in args.items():
        if key in params and _argument_matches(value, hints.get(key), params[key].default) is False:
            wanted = type_text(hints[key]) if key in hints else type(params[key].default).__name__
            problems.add((key,), f"optimizer {type_name} expects {wanted}, got {describe_value(value)}")


def _argument_matches(value: Any, hint: Any, default: Any) -> Optional[bool]:
    """Whether ``value`` fits the annotation ``hint`` (None: no hint) or, where the
    annotation cannot tell (torch annotates numbers as ``float | Tensor``), the type of the
    ``default``; None when neither can tell."""
    matches = type_matches(value, hint) if hint is not None else None
    if matches is None and isinstance(default, bool):
        return isinstance(value, bool)
    if matches is None and _is_number(default):
        return _is_number(value)
    return matches


def _parse_paramwise(table: Any, klass: type, problems: Problems) -> list[tuple[str, re.Pattern, dict[str, Any]]]:
    """``paramwise_options`` -> ``[(regex, compiled, options)]`` in table order."""
    if table is None:
        return []
    if not isinstance(table, Mapping):
        problems.add(("paramwise_options",), "must be a table of regular expression -> {option = value}, "
                     f"got {describe_value(table)}")
        return []
    takes_momentum = "momentum" in accepted_parameters(klass)[0]
    rules = []
    for regex, options in table.items():
        where = ("paramwise_options", regex)
        try:
            compiled = re.compile(regex)
        except re.error as exc:
            problems.add(where, f"invalid regular expression: {exc}")
            continue
        if not isinstance(options, Mapping):
            problems.add(where, f"must be a table of options ({', '.join(PARAMWISE_OPTIONS)}), "
                         f"got {describe_value(options)}")
            continue
        for option, value in options.items():
            message = _paramwise_option_problem(option, value, klass, takes_momentum)
            if message:
                problems.add((*where, option), message)
        rules.append((regex, compiled, dict(options)))
    return rules


def _paramwise_option_problem(option: str, value: Any, klass: type, takes_momentum: bool) -> Optional[str]:
    """Why ``option = value`` cannot stand in a ``paramwise_options`` entry, or None."""
    if option not in PARAMWISE_OPTIONS:
        hint = did_you_mean(option, PARAMWISE_OPTIONS) or f"; options are {', '.join(PARAMWISE_OPTIONS)}"
        return f"unknown paramwise option{hint}"
    kinds = PARAMWISE_OPTIONS[option]
    if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
        return f"must be {'true or false' if bool in kinds else 'a number'}, got {describe_value(value)}"
    if bool not in kinds and value < 0:
        return f"must be >= 0, got {value!r}"
    if option == "momentum" and not takes_momentum:
        return f"optimizer {klass.__name__} takes no momentum argument"
    return None
