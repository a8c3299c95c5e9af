"""Config tables -> objects, validated against constructor signatures before any is built.

A table with ``type`` is a component. Its registry (kind) comes from the key it sits under:
``backbone`` -> backbones, ``neck`` -> necks, ``head`` -> heads, ``memory`` -> memories,
``pipeline`` -> transforms, ``dataset`` -> datasets, ``data_source`` -> data_sources,
``hooks`` -> hooks, ``evaluator`` -> evaluators, ``model`` -> algorithms; a key ending in one
of these words (``target_neck``) counts too, and a component class may name more in
``__selfsup_arg_kinds__ = {"predictor": "necks"}``. Under any other key the name is looked up
in every registry. Tables under keys ending in ``_cfg`` (``init_cfg``, ``norm_cfg``) are data
for their component and are passed through unbuilt.

Every typed table is checked first: known ``type``, no unknown argument (with a
did-you-mean), no missing required argument, simple type mismatches against annotations.
All problems are reported together in one :class:`ConfigError`, each with its file and
dotted key path. Only then are the objects constructed, innermost first.
"""
from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

import attrs

from . import import_paths as _import_paths
from . import registry as _registry
from . import session as _session
from .config import Config, KeyPath
from .errors import ConfigError, Problems, SelfSupError, describe_exception, did_you_mean
from .value_checks import component_item_problem, component_value_problem, range_problem, scalar_fits_class

#: Kinds the trainer builds itself from its own tables (``[optimizer]`` gets the model's
#: parameters; ``[runner] distributed`` names a runtime): no config key holds them as components.
_NOT_CONFIG_KEYS = ("optimizers", "runtimes", "lr_policies")
def _config_kinds(registries: Any) -> list[str]:
    """The kinds a config table can name by ``type`` alone (all but :data:`_NOT_CONFIG_KEYS`)."""
    return [kind for kind in registries if kind not in _NOT_CONFIG_KEYS]


#: Config keys whose typed tables are components of a kind: each kind's registry name and
#: its singular (from :data:`selfsup_core.registry.KINDS`), plus the MMSelfSup spellings of
#: config tables. A key ending in ``_<one of these>`` (``online_neck``) has the same kind.
KEY_KINDS: dict[str, str] = {
    **{kind: kind for kind in _registry.KINDS if kind not in _NOT_CONFIG_KEYS},
    **{key: kind for key, kind in _registry.KIND_ALIASES.items() if kind not in _NOT_CONFIG_KEYS},
    "model": "algorithms",
    "source": "data_sources",
    "pipeline": "transforms",
    "pipelines": "transforms",
}
RAW_SUFFIX = "_cfg"


def kind_for_key(key: str | int, owner: Any = None) -> str | None:
    """The component kind a typed table under ``key`` belongs to, if the key says."""
    if not isinstance(key, str):
        return None
    declared = getattr(owner, "__selfsup_arg_kinds__", None) or {}
    if key in declared:
        return _registry.canonical_kind(declared[key])
    lowered = key.lower()
    return KEY_KINDS.get(lowered) or KEY_KINDS.get(lowered.rsplit("_", 1)[-1])


@attrs.define
class _Planned:
    """A validated component table, ready to construct."""

    path: KeyPath
    name: str
    label: str
    factory: Any
    kwargs: dict[str, Any]


@attrs.define
class _Deferred:
    """An argument listed in its owner's ``__selfsup_deferred_args__``: checked with the rest,
    passed as its table (plain data), built by the owner later (e.g. a hook that opens data
    only when the run starts, so that ``--check`` needs no data on disk)."""

    table: Any


class Builder:
    """Validates and builds config tables; collects every problem before raising."""

    def __init__(self, config: Config | None = None, registries: _registry.Registries | None = None) -> None:
        self.config = config if config is not None else Config({})
        self.registries = registries if registries is not None else _session.registries()
        self.problems = Problems(self.config)
        self._causes: list[BaseException] = []

    # -- public -----------------------------------------------------------------------------
    def build(self, table: Any, kind: str | None, path: KeyPath = (), default_args: Mapping[str, Any] | None = None) -> Any:
        """Validate then construct the component table ``table`` found at ``path``."""
        if not (isinstance(table, dict) and "type" in table):
            what = f"a {kind} component" if kind else "a component"
            raise ConfigError(self.config.problem(path, f"must be a table with a 'type' naming {what}"))
        plan = self.plan(table, kind, path, default_args)
        self.raise_problems()
        return self.construct(plan)

    def plan(self, value: Any, kind: str | None, path: KeyPath, default_args: Mapping[str, Any] | None = None) -> Any:
        """``value`` with every component table replaced by its validated plan."""
        if isinstance(value, dict) and "type" in value:
            return self._plan_component(value, kind, path, default_args or {})
        if isinstance(value, dict):
            return {k: self._plan_child(v, k, path, None) for k, v in value.items()}
        if isinstance(value, list):
            return [self.plan(v, kind, (*path, i)) for i, v in enumerate(value)]
        return value

    def raise_problems(self) -> None:
        """Raise one :class:`ConfigError` listing every problem found so far, if any."""
        if self.problems:
            problems, self.problems = self.problems, Problems(self.config)
            cause = self._causes[0] if self._causes else None
            raise ConfigError(problems) from cause

    def construct(self, plan: Any) -> Any:
        """Construct a planned value, innermost components first."""
        if isinstance(plan, _Deferred):
            return plan.table
        if isinstance(plan, _Planned):
            kwargs = {k: self.construct(v) for k, v in plan.kwargs.items()}
            try:
                return plan.factory(**kwargs)
            except SelfSupError:
                raise
            except Exception as exc:
                raise ConfigError(
                    self.config.problem(plan.path, f"{plan.label} could not be built: {describe_exception(exc)}")
                ) from exc
        if isinstance(plan, dict):
            return {k: self.construct(v) for k, v in plan.items()}
        if isinstance(plan, list):
            return [self.construct(v) for v in plan]
        return plan

    # -- internals -----------------------------------------------------------------------------
    def _plan_child(self, value: Any, key: str | int, path: KeyPath, owner: Any) -> Any:
        if isinstance(key, str) and key.endswith(RAW_SUFFIX):
            return value
        kind = strict_kind_for_key(key, owner) if owner is not None else None
        if kind is not None and component_value_problem(key, value, kind) and not _declared_plain(owner, key, value):
            self._problem((*path, key), str(component_value_problem(key, value, kind)))
            return value
        planned = self.plan(value, kind_for_key(key, owner), (*path, key))
        if key in (getattr(owner, "__selfsup_deferred_args__", None) or ()):
            return _Deferred(value)  # validated now; the owner builds it when it needs it (run time)
        return planned

    def _problem(self, path: KeyPath, message: str, cause: BaseException | None = None) -> None:
        self.problems.add(path, message)
        if cause is not None:
            self._causes.append(cause)

    def _plan_component(self, table: dict[str, Any], kind: str | None, path: KeyPath, default_args: Mapping[str, Any]) -> Any:
        type_name = table["type"]
        if not isinstance(type_name, str) or not type_name:
            self._problem((*path, "type"), f"must be a component name (string), got {type_name!r}")
            return None
        component = self._resolve(type_name, kind, (*path, "type"))
        if component is None:
            return None
        try:
            factory = component.load()
        except SelfSupError as exc:  # chain the plugin's own exception, not our wrapper
            self._problem((*path, "type"), str(exc), exc.__cause__ or exc)
            return None
        label = f"{type_name} ({component.provider})"
        args = {k: v for k, v in table.items() if k != "type"}
        for key, value in default_args.items():
            args.setdefault(key, value)
        self._check_arguments(factory, label, args, path)
        kwargs = {k: self._plan_child(v, k, path, factory) for k, v in args.items()}
        return _Planned(path, type_name, label, factory, kwargs)

    def _resolve(self, type_name: str, kind: str | None, path: KeyPath) -> Any:
        if kind is not None:
            try:
                return self.registries[kind].lookup(type_name)
            except SelfSupError as exc:
                self._problem(path, str(exc), exc.__cause__)
                return None
        found = [k for k in _config_kinds(self.registries) if type_name in self.registries[k]]
        if len(found) == 1:
            return self._resolve(type_name, found[0], path)
        if found:
            self._problem(path, f"{type_name!r} is ambiguous here: it names {' and '.join(found)}; "
                          "put it under a key that names its kind (e.g. backbone, neck, head)")
            return None
        if ":" in type_name:  # qualified name or import path: take the first kind that has it
            if not _import_paths.allowed() and _import_paths.looks_like_import_path(type_name):
                self._problem(path, _import_paths.refusal(type_name, None))
                return None
            errors = []
            for candidate in _config_kinds(self.registries):
                try:
                    return self.registries[candidate].lookup(type_name)
                except SelfSupError as exc:
                    errors.append(exc)
            if all(isinstance(e, _import_paths.ImportPathRefused) for e in errors):
                not_a_class = [e for e in errors if "not a class" in str(e)]
                message = str(not_a_class[0]) if not_a_class else (
                    f"{type_name!r} names a class which is not a component of any kind here; put it under a key "
                    "that names its kind (e.g. backbone, dataset, pipeline)")
                self._problem(path, message)
                return None
            self._problem(path, str(errors[-1]), errors[-1].__cause__)
            return None
        every = [n for k in _config_kinds(self.registries) for n in self.registries[k].names()]
        self._problem(path, f"unknown component type {type_name!r}{did_you_mean(type_name, every)} "
                      "(run 'selfsup-run list' to see what is installed)")
        return None

    def _check_arguments(self, factory: Any, label: str, args: Mapping[str, Any], path: KeyPath) -> None:
        params, open_ended = accepted_parameters(factory)
        for key in args:
            if key not in params and not open_ended:
                hint = did_you_mean(key, params) or (
                    f"; it takes {', '.join(params)}" if params else "; it takes no arguments"
                )
                self._problem((*path, key), f"unknown argument of {label}{hint}")
        for name in required_parameters(factory):
            if name not in args:
                self._problem(path, f"missing required argument {name!r} of {label}")
        for key, value in args.items():
            # a component declares arguments where 0 has a meaning (SwAVNeck: 0 = no such layer)
            zero_ok = getattr(factory, "__selfsup_zero_ok__", ())
            problem = range_problem(key, value) if isinstance(key, str) and not (key in zero_ok and value == 0) else None
            if problem:
                self._problem((*path, key), problem)
        hints = annotations(factory)
        for key, value in args.items():
            if key in hints and not (isinstance(value, dict) and ("type" in value or strict_kind_for_key(key, factory))):
                if type_matches(value, hints[key]) is False:
                    self._problem((*path, key), f"{label} expects {type_text(hints[key])}, got {describe_value(value)}")


# -- signatures -----------------------------------------------------------------------------
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _signature(obj: Any) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        return None


def _closes_kwargs(klass: type) -> bool:
    """True for base classes whose ``__init__`` takes no configurable arguments."""
    return klass is object or (klass.__name__ == "Module" and klass.__module__ == "torch.nn.modules.module")


def accepted_parameters(factory: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword arguments ``factory`` accepts, and whether it accepts any others too.

    A class whose ``__init__`` takes ``**kwargs`` is followed up its MRO, so that arguments
    forwarded to a base class are known; ``object`` and ``torch.nn.Module`` close the chain.
    """
    signature = _signature(factory)
    if signature is None:
        return {}, True
    params = {n: p for n, p in signature.parameters.items() if p.kind in _KEYWORD_KINDS}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return params, False
    if not inspect.isclass(factory):
        return params, True
    for klass in factory.__mro__[1:]:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if _closes_kwargs(klass):
            return params, False
        base = _signature(init)
        if base is None:
            return params, True
        for name, param in list(base.parameters.items())[1:]:
            if param.kind in _KEYWORD_KINDS:
                params.setdefault(name, param)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in base.parameters.values()):
            return params, False
    return params, True


def required_parameters(factory: Any) -> list[str]:
    """Keyword arguments of ``factory`` that have no default."""
    signature = _signature(factory)
    if signature is None:
        return []
    return [n for n, p in signature.parameters.items() if p.kind in _KEYWORD_KINDS and p.default is p.empty]


def _declared_plain(owner: Any, key: str | int, value: Any) -> bool:
    """Whether ``owner`` annotates argument ``key`` with a plain type ``value`` fits (not a
    component): ``MultiClsHead(backbone: str = "resnet50")`` names an architecture."""
    if not isinstance(key, str) or not isinstance(value, (str, int, float)):
        return False
    hint = annotations(owner).get(key)
    return hint is not None and type_matches(value, hint) is True


def annotations(factory: Any) -> dict[str, Any]:
    """Evaluated parameter annotations; names that cannot be resolved are left out."""
    function = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - fall back to one annotation at a time
        pass
    signature = _signature(factory)
    namespace = getattr(function, "__globals__", {})
    hints = {}
    for name, param in (signature.parameters.items() if signature else ()):
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, dict(namespace))  # noqa: S307 - the plugin's own annotation
            except Exception:  # noqa: BLE001
                continue
        if annotation is not param.empty:
            hints[name] = annotation
    return hints


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def type_matches(value: Any, annotation: Any) -> bool | None:
    """Whether a TOML value fits an annotation: True, False, or None when it cannot be told."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if origin is Union or (hasattr(types, "UnionType") and isinstance(annotation, types.UnionType)):
        results = [type_matches(value, a) for a in args]
        return True if True in results else (None if None in results else False)
    if annotation is type(None) or annotation is None:
        return value is None
    if origin is Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    container = origin or annotation
    if container in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        item = args[0] if args and (container is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
        if item is not None and any(type_matches(v, item) is False for v in value if not _is_component(v)):
            return False
        return True
    if container in _MAPPINGS:
        return isinstance(value, dict)
    return scalar_fits_class(value, annotation)


def _is_component(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def type_text(annotation: Any) -> str:
    """An annotation as people write it: ``int``, ``list[int]``, ``str | None``."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return inspect.formatannotation(annotation).replace("typing.", "")


def describe_value(value: Any) -> str:
    """``string 'abc'``, ``integer 3``, ``array [1, 2]`` ..."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


# -- convenience ------------------------------------------------------------------------------
def build(
    table: Mapping[str, Any],
    kind: str | None,
    *,
    config: Config | None = None,
    path: str | KeyPath = (),
    default_args: Mapping[str, Any] | None = None,
    registries: _registry.Registries | None = None,
) -> Any:
    """Build the component a table describes (``{"type": "ResNet", "depth": 18}``).

    ``kind`` picks the registry (``"backbones"``); ``config`` and ``path`` make errors name
    the file and key; ``default_args`` fill arguments the table does not set.
    """
    keys = tuple(path.split(".")) if isinstance(path, str) and path else tuple(path or ())
    builder = Builder(config, registries)
    return builder.build(dict(table), _registry.canonical_kind(kind) if kind else None, keys, default_args)


#: dataset tables of the trainer's sections, checked as datasets by validate() (with the
#: component tables of the sections plugins declare: selfsup_core.sections.component_keys)
_SECTION_DATASETS = {("data", "train"): "datasets", ("data", "val"): "datasets"}


def strict_kind_for_key(key: str | int, owner: Any = None) -> str | None:
    """The kind of a key that can only hold components (declared by ``owner`` or one of
    :data:`KEY_KINDS` exactly, not a suffix: ``num_heads`` is a number)."""
    if not isinstance(key, str):
        return None
    declared = getattr(owner, "__selfsup_arg_kinds__", None) or {}
    if key in declared:
        return _registry.canonical_kind(declared[key])
    return KEY_KINDS.get(key.lower())


def validate(config: Config, registries: _registry.Registries | None = None) -> None:
    """Check every component table of ``config`` without constructing anything.

    Tables under keys that name a kind are checked strictly; a typed table under another key
    (``optimizer``, a section the trainer owns) is checked only if its ``type`` names a
    registered component.
    """
    builder = Builder(config, registries)
    from .sections import component_keys

    section_kinds = {**_SECTION_DATASETS, **component_keys()}

    def walk(value: Any, path: KeyPath) -> None:
        key = path[-1] if path else None
        if isinstance(key, str) and key.endswith(RAW_SUFFIX):
            return
        kind = kind_for_key(key) if key is not None else None
        if kind is None and (not isinstance(value, dict) or "type" in value):  # data.train, a plugin section's dataset
            kind = section_kinds.get(tuple(path))  # (a string or number there is refused)
        strict = strict_kind_for_key(key) if key is not None else None
        if (strict or kind) and component_value_problem(key, value, strict or kind):
            builder._problem(path, str(component_value_problem(key, value, strict or kind)))
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if kind and isinstance(item, dict):
                    builder.plan(item, kind, (*path, i))
                else:
                    walk(item, (*path, i))
        elif isinstance(value, dict):
            type_name = value.get("type")
            if kind:
                builder.plan(value, kind, path)
            elif isinstance(type_name, str) and (any(type_name in builder.registries[k] for k in _config_kinds(builder.registries))
                                                 or _import_paths.looks_like_import_path(type_name)):
                builder.plan(value, None, path)
            else:
                for sub_key, sub in value.items():
                    walk(sub, (*path, sub_key))

    walk(config.data, ())
    builder.raise_problems()


def build_model(config: Config, registries: _registry.Registries | None = None) -> Any:
    """Build the algorithm described by the config's ``[model]`` table."""
    if "model" not in config.data:
        raise ConfigError("missing [model] table (the algorithm to train)", file=config.filename, key="model")
    return Builder(config, registries).build(config.data["model"], "algorithms", ("model",))


def build_hooks(config: Config, registries: _registry.Registries | None = None) -> list[tuple[str, Any]]:
    """Build the config's ``[[hooks]]`` (a single ``[hooks]`` table counts as one) in order.

    Returns ``(name, hook)`` pairs named ``hooks.<index>.<type>``. Every hook is tried; one
    ConfigError lists the problems of all that could not be built (a constructor's ValueError
    included), each with its config path.
    """
    raw = config.data.get("hooks", [])
    tables = [raw] if isinstance(raw, Mapping) else raw
    hooks: list[tuple[str, Any]] = []
    problems = Problems(config)
    if not isinstance(tables, list) or (isinstance(raw, Mapping) and "type" not in raw):
        # the texts validate() gives, so that --check, which runs both, says it once
        problems.add(("hooks",), component_value_problem("hooks", raw, "hooks")
                     or f"must be an array of tables [[hooks]], each with a 'type', got {describe_value(raw)}")
        problems.raise_if_any()
    for index, table in enumerate(tables):
        if not isinstance(table, Mapping) or "type" not in table:
            problems.add(("hooks",), component_item_problem(index, table, "hooks"))
            continue
        try:
            hooks.append((f"hooks.{index}.{table['type']}", Builder(config, registries).build(table, "hooks", ("hooks", index))))
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems.raise_if_any()
    return hooks


__all__ = ["Builder", "KEY_KINDS", "build", "build_hooks", "build_model", "kind_for_key", "validate"]
