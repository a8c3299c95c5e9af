"""``init_cfg`` -> weight initialisation and pretrained-weight loading.

An ``init_cfg`` is a dict or a list of dicts (TOML tables), applied in order, so a later
entry overrides an earlier one where both touch the same weights::

    init_cfg = [
        {type = "Kaiming", layer = ["Conv2d"], mode = "fan_out", nonlinearity = "relu"},
        {type = "Constant", val = 1, layer = ["_BatchNorm", "GroupNorm"]},
        {type = "Pretrained", checkpoint = "work_dirs/byol/latest.pth", prefix = "backbone."},
    ]

Initialisers (MMCV names and defaults):

- ``Kaiming``: ``a=0``, ``mode="fan_out"``, ``nonlinearity="relu"``, ``distribution="normal"|"uniform"``
- ``Xavier``: ``gain=1``, ``distribution="normal"|"uniform"``
- ``Normal``: ``mean=0``, ``std=1``
- ``Uniform``: ``a=0``, ``b=1``
- ``Constant``: ``val`` (required)
- ``TruncNormal``: ``mean=0``, ``std=1``, ``a=-2``, ``b=2`` (absolute cut-offs)

Each takes ``layer`` (a class name or list of names; a module matches when the name is its
class or one of its base classes, so ``"_BatchNorm"`` covers every batch norm and
``"_ConvNd"`` every conv), ``bias`` (value the bias is set to, default 0) or ``bias_prob``
(bias = ``-log((1 - p) / p)``), and ``override`` (a dict or list of dicts with ``name`` = the
attribute path of a sub-module, e.g. ``"fc"``, initialised with its own settings; a missing
``type`` is taken from the parent entry). Without ``layer`` the entry applies to every
sub-module that has a ``weight`` parameter.

``Pretrained``: ``checkpoint`` (a local path, or a URI that a plugin's
``selfsup_resolve_checkpoint`` hook turns into one; nothing is downloaded here), ``prefix``
(keep only keys starting with it, then strip it, e.g. ``"backbone."``), ``strict=False``,
``map_location="cpu"``. Files load with ``torch.load(..., weights_only=True)``, or as
safetensors when the name ends in ``.safetensors`` (timm hub files, ``selfsup-run export``); a raw state
dict and training checkpoints (``state_dict`` / ``model`` entries, DDP ``module.`` prefixes)
are both accepted. The result is an :class:`InitReport` (missing, unexpected, loaded and
shape-mismatched keys), also logged on the ``selfsup_models.init`` logger.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import attrs
import torch
from selfsup_core.api import SelfSupError, WeightsError, read_state_dict, resolve_checkpoint, select_prefix
from torch import nn

__all__ = ["INITIALIZERS", "BaseModule", "InitReport", "apply_init_cfg", "load_checkpoint_state_dict"]

logger = logging.getLogger("selfsup_models.init")


@attrs.define
class InitReport:
    """What an ``init_cfg`` did.

    Attributes:
        loaded: state-dict keys copied from pretrained checkpoints.
        missing: model keys the checkpoint did not provide (they keep their previous values).
        unexpected: checkpoint keys (after ``prefix`` stripping) the model does not have.
        mismatched: ``"key: checkpoint (shape) vs model (shape)"`` lines for keys skipped
            because their shapes differ.
        initialized: one line per non-pretrained initialiser applied, e.g.
            ``"Kaiming on 20 modules"``.
        sources: the checkpoint files read.
    """

    loaded: list[str] = attrs.field(factory=list)
    missing: list[str] = attrs.field(factory=list)
    unexpected: list[str] = attrs.field(factory=list)
    mismatched: list[str] = attrs.field(factory=list)
    initialized: list[str] = attrs.field(factory=list)
    sources: list[str] = attrs.field(factory=list)

    def merge(self, other: InitReport) -> InitReport:
        """Append ``other``'s entries to this report (in place) and return it."""
        for field in attrs.fields(InitReport):
            getattr(self, field.name).extend(getattr(other, field.name))
        return self

    def summary(self) -> str:
        """One line: counts of loaded / missing / unexpected / mismatched keys."""
        parts = [", ".join(self.initialized)] if self.initialized else []
        if self.sources:
            parts.append(
                f"pretrained {', '.join(self.sources)}: {len(self.loaded)} loaded, "
                f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                f"{len(self.mismatched)} shape-mismatched"
            )
        return "; ".join(parts) or "nothing initialised"


# --------------------------------------------------------------------------- initialisers


def _kaiming(t: torch.Tensor, a: float = 0.0, mode: str = "fan_out", nonlinearity: str = "relu",
             distribution: str = "normal") -> None:
    if distribution == "uniform":
        nn.init.kaiming_uniform_(t, a=a, mode=mode, nonlinearity=nonlinearity)
    else:
        nn.init.kaiming_normal_(t, a=a, mode=mode, nonlinearity=nonlinearity)


def _xavier(t: torch.Tensor, gain: float = 1.0, distribution: str = "normal") -> None:
    if distribution == "uniform":
        nn.init.xavier_uniform_(t, gain=gain)
    else:
        nn.init.xavier_normal_(t, gain=gain)


def _normal(t: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> None:
    nn.init.normal_(t, mean=mean, std=std)


def _uniform(t: torch.Tensor, a: float = 0.0, b: float = 1.0) -> None:
    nn.init.uniform_(t, a=a, b=b)


def _constant(t: torch.Tensor, val: float) -> None:
    nn.init.constant_(t, val)


def _trunc_normal(t: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> None:
    nn.init.trunc_normal_(t, mean=mean, std=std, a=a, b=b)


# name -> (weight initialiser, its option names, required option names)
INITIALIZERS: dict[str, tuple[Callable[..., None], tuple[str, ...], tuple[str, ...]]] = {
    "Kaiming": (_kaiming, ("a", "mode", "nonlinearity", "distribution"), ()),
    "Xavier": (_xavier, ("gain", "distribution"), ()),
    "Normal": (_normal, ("mean", "std"), ()),
    "Uniform": (_uniform, ("a", "b"), ()),
    "Constant": (_constant, ("val",), ("val",)),
    "TruncNormal": (_trunc_normal, ("mean", "std", "a", "b"), ()),
}
_COMMON_KEYS = ("layer", "bias", "bias_prob", "override")
_PRETRAINED_KEYS = ("checkpoint", "prefix", "strict", "map_location")
_DISTRIBUTIONS = ("normal", "uniform")


def _did_you_mean(word: str, candidates: Any) -> str:
    from selfsup_core.api import did_you_mean

    return did_you_mean(word, candidates)


def _known_types() -> str:
    return ", ".join([*INITIALIZERS, "Pretrained"])


def _check_keys(init_type: str, cfg: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = [key for key in cfg if key not in allowed]
    if unknown:
        raise ValueError(
            f"init_cfg: {init_type} does not take {', '.join(map(repr, unknown))}"
            f"{_did_you_mean(unknown[0], allowed)}; it takes: {', '.join(allowed)}"
        )


def _layer_names(module: nn.Module) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def _matches(module: nn.Module, layers: list[str] | None) -> bool:
    if layers is None:
        return isinstance(getattr(module, "weight", None), torch.Tensor)
    return bool(_layer_names(module).intersection(layers))


def _apply_initializer(module: nn.Module, init_type: str, cfg: dict[str, Any], report: InitReport) -> None:
    fn, option_names, required = INITIALIZERS[init_type]
    _check_keys(init_type, cfg, (*option_names, *_COMMON_KEYS))
    for name in required:
        if name not in cfg:
            raise ValueError(f"init_cfg: {init_type} needs {name!r}")
    if cfg.get("distribution", "normal") not in _DISTRIBUTIONS:
        raise ValueError(
            f"init_cfg: {init_type} distribution must be 'normal' or 'uniform', got {cfg['distribution']!r}"
        )
    options = {k: cfg[k] for k in option_names if k in cfg}
    layers = cfg.get("layer")
    if isinstance(layers, str):
        layers = [layers]
    if "bias_prob" in cfg and cfg["bias_prob"] is not None:
        p = float(cfg["bias_prob"])
        if not 0.0 < p < 1.0:
            raise ValueError(f"init_cfg: bias_prob must be in (0, 1), got {p}")
        bias = -math.log((1 - p) / p)
    else:
        bias = float(cfg.get("bias", 0.0))

    overrides = cfg.get("override") or []
    if isinstance(overrides, Mapping):
        overrides = [overrides]
    override_targets: dict[str, dict[str, Any]] = {}
    for entry in overrides:
        entry = dict(entry)
        if "name" not in entry:
            raise ValueError(f"init_cfg: override entry {entry!r} needs 'name' (a sub-module path)")
        name = entry.pop("name")
        try:
            module.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in module.named_modules() if n]
            raise ValueError(
                f"init_cfg: override name {name!r} is not a sub-module of {type(module).__name__}"
                f"{_did_you_mean(name, children)}"
            ) from None
        if "type" not in entry:
            entry = {**{k: v for k, v in cfg.items() if k not in ("override", "layer")}, **entry}
            entry["type"] = init_type
        override_targets[name] = entry

    skip = {id(m) for name in override_targets for m in module.get_submodule(name).modules()}
    count = 0
    with torch.no_grad():
        for sub in module.modules():
            if id(sub) in skip or not _matches(sub, layers):
                continue
            weight = getattr(sub, "weight", None)
            if isinstance(weight, torch.Tensor):
                fn(weight, **options)
                count += 1
            sub_bias = getattr(sub, "bias", None)
            if isinstance(sub_bias, torch.Tensor):
                nn.init.constant_(sub_bias, bias)
    report.initialized.append(f"{init_type} on {count} modules")
    for name, entry in override_targets.items():
        sub_report = apply_init_cfg(module.get_submodule(name), entry)
        report.merge(sub_report)


# --------------------------------------------------------------------------- checkpoints


def _resolve_checkpoint(uri: str) -> str:
    """A local file for ``uri`` (through the session's ``selfsup_resolve_checkpoint`` hooks);
    ``FileNotFoundError`` with one line when there is none."""
    try:
        return resolve_checkpoint(uri, "init_cfg Pretrained")
    except SelfSupError as exc:
        raise FileNotFoundError(str(exc)) from None


def load_checkpoint_state_dict(
    checkpoint: str, prefix: str | None = None, map_location: str | None = "cpu"
) -> tuple[dict[str, torch.Tensor], str]:
    """Read the state dict of a checkpoint file or URI.

    Returns ``(state_dict, local_path)``; with ``prefix`` only keys starting with it are
    kept, with the prefix removed. Raises ``FileNotFoundError`` (one line naming the path)
    or ``ValueError`` (no state dict inside, or no key with that prefix).
    """
    path = _resolve_checkpoint(checkpoint)
    try:
        state, _ = read_state_dict(path, map_location=map_location)
        if prefix:
            state, _ = select_prefix(state, prefix, path)
    except WeightsError as exc:
        raise ValueError(f"init_cfg Pretrained: {exc}") from exc
    return state, path


def _load_pretrained(module: nn.Module, cfg: dict[str, Any], report: InitReport) -> None:
    _check_keys("Pretrained", cfg, _PRETRAINED_KEYS)
    if not cfg.get("checkpoint"):
        raise ValueError("init_cfg: Pretrained needs 'checkpoint' (a file path)")
    strict = bool(cfg.get("strict", False))
    state, path = load_checkpoint_state_dict(
        cfg["checkpoint"], prefix=cfg.get("prefix"), map_location=cfg.get("map_location", "cpu")
    )
    # Let modules adapt checkpoint tensors (e.g. resize a ViT position embedding) before
    # comparing shapes: load_state_dict pre-hooks are run by a real load below; modules
    # that also want the shape check to see the adapted tensors expose this method.
    for name, sub in module.named_modules():
        adapt = getattr(sub, "adapt_state_dict", None)
        if callable(adapt):
            state = adapt(state, prefix=f"{name}." if name else "")
    own = module.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if strict and (missing or unexpected or mismatched):
        problems = []
        if missing:
            problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {'; '.join(mismatched)}")
        raise ValueError(
            f"init_cfg Pretrained (strict): {path} does not match {type(module).__name__}: "
            + "; ".join(problems)
            + " (set strict = false to load what matches, or fix prefix)"
        )
    module.load_state_dict(usable, strict=False)
    report.sources.append(path)
    report.loaded.extend(usable)
    report.missing.extend(missing)
    report.unexpected.extend(unexpected)
    report.mismatched.extend(mismatched)
    from selfsup_core.api import load_summary

    # one short line, never every key name (a 0-of-120 load would otherwise be kilobytes)
    log = logger.warning if (missing or unexpected or mismatched) else logger.info
    log("%s: %s from %s", type(module).__name__,
        load_summary(len(usable), missing, unexpected, mismatched), path)


# --------------------------------------------------------------------------- entry points


def apply_init_cfg(module: nn.Module, init_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> InitReport:
    """Apply an ``init_cfg`` (dict, list of dicts in order, or ``None``) to ``module`` in place.

    Returns an :class:`InitReport`. Raises ``ValueError`` for an unknown type or option (the
    message names the known ones), ``FileNotFoundError`` for a checkpoint that is not there.
    """
    report = InitReport()
    if init_cfg is None:
        return report
    entries = [init_cfg] if isinstance(init_cfg, Mapping) else list(init_cfg)
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise ValueError(f"init_cfg entries must be tables like {{type = \"Kaiming\"}}, got {entry!r}")
        cfg = dict(entry)
        init_type = cfg.pop("type", None)
        if init_type == "Pretrained":
            _load_pretrained(module, cfg, report)
        elif init_type in INITIALIZERS:
            _apply_initializer(module, init_type, cfg, report)
        else:
            hint = _did_you_mean(str(init_type), [*INITIALIZERS, "Pretrained"]) if init_type else ""
            raise ValueError(f"init_cfg: unknown init type {init_type!r}{hint}; known types: {_known_types()}")
    return report


class BaseModule(nn.Module):
    """``nn.Module`` with an ``init_cfg``.

    Subclasses build their layers, give them their default initialisation, then call
    ``self.init_weights()`` as the last line of ``__init__`` so a built component is ready
    to use; ``init_weights`` applies ``self.init_cfg`` on top of the defaults and keeps the
    report in ``self.init_report``. Override :meth:`default_init` for the defaults.
    """

    def __init__(self, init_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> None:
        super().__init__()
        if init_cfg is not None and not isinstance(init_cfg, Mapping):
            init_cfg = [dict(c) if isinstance(c, Mapping) else c for c in init_cfg]
        elif init_cfg is not None:
            init_cfg = dict(init_cfg)
        self.init_cfg = init_cfg
        self.init_report = InitReport()

    def default_init(self) -> None:
        """The component's own initialisation, run by :meth:`init_weights` before ``init_cfg``."""

    def init_weights(self) -> InitReport:
        """Run :meth:`default_init`, then apply ``self.init_cfg``; return the report."""
        self.default_init()
        self.init_report = apply_init_cfg(self, self.init_cfg)
        return self.init_report
