"""Component registries, one per kind, backed by entry-point groups.

A config's ``type`` names a component. It resolves, in this order, to:

* ``"dist-name:Name"`` -- the component ``Name`` provided by that distribution;
* ``"package.module:Class"`` -- a dotted import path, for one-off experiments: refused
  before anything is imported unless the command line opted in (``--allow-import-paths``,
  see :mod:`selfsup_core.import_paths`), and then only a class of the kind expected;
* ``"Name"`` -- the component registered in-process under that name (``register`` with
  ``force=True`` or ``temporary``), else the single installed distribution providing it. Two
  distributions providing it is an error naming both; never a silent choice.

Listing reads metadata only; a component's module is imported when it is first used. A
component that fails to import is remembered as broken (its error is kept) and does not
affect the others.
"""
from __future__ import annotations

import contextlib
import fnmatch
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import attrs

from . import import_paths as _import_paths
from .import_paths import ImportPathRefused
from .discovery import EntryPointInfo, normalize_name, scan_entry_points
from .errors import (
    DuplicateComponentError,
    PluginLoadError,
    SelfSupError,
    UnknownComponentError,
    describe_exception,
    did_you_mean,
)

#: Component kinds and the entry-point group each is discovered from.
KINDS: dict[str, str] = {
    "algorithms": "selfsup.algorithms",
    "backbones": "selfsup.backbones",
    "necks": "selfsup.necks",
    "heads": "selfsup.heads",
    "memories": "selfsup.memories",
    "datasets": "selfsup.datasets",
    "data_sources": "selfsup.data_sources",
    "transforms": "selfsup.transforms",
    "hooks": "selfsup.hooks",
    "evaluators": "selfsup.evaluators",
    "runtimes": "selfsup.runtimes",
    "optimizers": "selfsup.optimizers",
    "lr_policies": "selfsup.lr_policies",
}
#: Singular spellings accepted for each kind (``list backbone``, ``[model.backbone]``).
KIND_ALIASES: dict[str, str] = {
    "algorithm": "algorithms",
    "backbone": "backbones",
    "neck": "necks",
    "head": "heads",
    "memory": "memories",
    "dataset": "datasets",
    "data_source": "data_sources",
    "transform": "transforms",
    "hook": "hooks",
    "evaluator": "evaluators",
    "runtime": "runtimes",
    "optimizer": "optimizers",
    "lr_policy": "lr_policies",
}
#: Provider name of components registered in-process (tests, notebooks).
IN_PROCESS = "<in-process>"
#: Provider name of components given as a dotted import path in a config.
IMPORT_PATH = "<import path>"

T = TypeVar("T")


def canonical_kind(kind: str) -> str:
    """``"backbone"``, ``"backbones"`` and ``"data-sources"`` -> the key used in :data:`KINDS`."""
    key = kind.strip().lower().replace("-", "_")
    key = KIND_ALIASES.get(key, key)
    if key not in KINDS:
        raise SelfSupError(
            f"unknown component kind {kind!r}{did_you_mean(key, KINDS)}; kinds are {', '.join(KINDS)}"
        )
    return key


def import_object(path: str) -> Any:
    """Import ``"package.module:attr.sub"`` (or ``"package.module.attr"``) and return the object."""
    module_name, sep, attr_path = path.partition(":")
    if not sep:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name or not attr_path:
        raise ValueError(f"{path!r} is not an import path of the form 'package.module:Name'")
    obj: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    return obj


@attrs.define(eq=False)
class Component:
    """One name of one kind from one provider; imports its object on first :meth:`load`."""

    kind: str
    name: str
    dist: str
    version: str
    target: str
    loader: Callable[[], Any] = attrs.field(repr=False)
    error: BaseException | None = attrs.field(default=None, repr=False)
    _obj: Any = attrs.field(default=None, repr=False, alias="_obj")

    @property
    def provider(self) -> str:
        """``"distribution version"`` (or ``"<in-process>"``)."""
        return f"{self.dist} {self.version}" if self.version else self.dist

    @property
    def is_loaded(self) -> bool:
        return self._obj is not None

    def load(self) -> Any:
        """Return the component's class or factory, importing it the first time.

        Raises :class:`PluginLoadError` chained to the original exception when the import
        fails; the failure is remembered and raised again on later calls.
        """
        if self._obj is not None:
            return self._obj
        if self.error is None:
            try:
                obj = self.loader()
                if not callable(obj):
                    raise TypeError(f"{self.target} is a {type(obj).__name__}, not a class or factory")
                self._obj = obj
                return obj
            except Exception as exc:  # noqa: BLE001 - isolate any failure of plugin code
                self.error = exc
        raise PluginLoadError(
            f"{self.kind} {self.name!r} from {self.provider} failed to load ({self.target}): "
            f"{describe_exception(self.error)}"
        ) from self.error

    @classmethod
    def from_entry_point(cls, kind: str, ep: EntryPointInfo) -> Component:
        return cls(kind, ep.name, ep.dist, ep.version, ep.value, ep.load)

    @classmethod
    def from_object(cls, kind: str, name: str, obj: Any, dist: str, version: str = "") -> Component:
        """A component for an object, or for a lazy ``"module:attr"`` string."""
        if isinstance(obj, str):
            return cls(kind, name, dist, version, obj, lambda: import_object(obj))
        target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"
        component = cls(kind, name, dist, version, target, lambda: obj)
        component._obj = obj if callable(obj) else None
        return component


class Registry:
    """The components of one kind: discovered from entry points, plus in-process ones."""

    def __init__(self, kind: str, source: Callable[[], Iterable[Component]] | None = None) -> None:
        self.kind = canonical_kind(kind)
        self.group = KINDS[self.kind]
        self._source = source
        self._provided: dict[str, list[Component]] | None = None
        self._local: dict[str, Component] = {}

    # -- catalogue -------------------------------------------------------------------------
    def _catalogue(self) -> dict[str, list[Component]]:
        if self._provided is None:
            self._provided = {}
            for component in self._source() if self._source else ():
                self._add_provided(component)
        return self._provided

    def _add_provided(self, component: Component) -> None:
        providers = self._provided.setdefault(component.name, [])  # type: ignore[union-attr]
        if any(normalize_name(p.dist) == normalize_name(component.dist) for p in providers):
            return  # the same distribution seen twice: collapse
        providers.append(component)

    def add(self, component: Component) -> None:
        """Add a component provided by a distribution (used for plugin hook registrations)."""
        self._catalogue()
        self._add_provided(component)

    def components(self) -> list[Component]:
        """Every provider of every name, sorted by name (in-process ones first for a name)."""
        everything = [*self._local.values()]
        for providers in self._catalogue().values():
            everything.extend(providers)
        return sorted(everything, key=lambda c: (c.name.lower(), c.dist != IN_PROCESS, c.dist))

    def names(self) -> list[str]:
        """The sorted component names of this kind."""
        return sorted({*self._local, *self._catalogue()}, key=str.lower)

    def list(self, pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = ()) -> list[str]:
        """Names matching any of the shell-style wildcards ``pattern`` and none of ``exclude``."""
        include = [pattern] if isinstance(pattern, str) else list(pattern)
        excluded = [exclude] if isinstance(exclude, str) else list(exclude)
        return [
            n
            for n in self.names()
            if any(fnmatch.fnmatchcase(n, p) for p in include)
            and not any(fnmatch.fnmatchcase(n, p) for p in excluded)
        ]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._local or name in self._catalogue())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"<Registry {self.kind} ({self.group})>"

    # -- resolution ------------------------------------------------------------------------
    def lookup(self, type_name: str) -> Component:
        """The component a config's ``type`` names (see the module docstring for the rules)."""
        prefix, sep, rest = type_name.partition(":")
        if sep:
            dists = {normalize_name(c.dist) for c in self.components()}
            if normalize_name(prefix) in dists or not _is_module_path(prefix):
                return self._lookup_qualified(prefix, rest, type_name)
            return self._lookup_import_path(type_name)
        if type_name in self._local:
            return self._local[type_name]
        providers = self._catalogue().get(type_name, [])
        if len(providers) == 1:
            return providers[0]
        if not providers:
            raise UnknownComponentError(self.kind, type_name, self.names())
        example = f"{providers[0].dist}:{type_name}"
        raise DuplicateComponentError(
            self.kind,
            type_name,
            [p.provider for p in providers],
            hint=f"; say which one with a qualified type, e.g. type = {example!r}",
        )

    def _lookup_qualified(self, dist: str, name: str, type_name: str) -> Component:
        wanted = normalize_name(dist)
        for component in self.components():
            if component.name == name and normalize_name(component.dist) == wanted:
                return component
        offered = [c.name for c in self.components() if normalize_name(c.dist) == wanted]
        if offered:
            hint = f" (distribution {dist!r} provides {self.kind}: {', '.join(offered)})"
        else:
            hint = f" (no installed distribution {dist!r} provides {self.kind})"
        raise UnknownComponentError(self.kind, type_name, [f"{dist}:{n}" for n in offered], hint=hint)

    def _lookup_import_path(self, type_name: str) -> Component:
        """A component for ``"package.module:Class"``: refused before any import unless import
        paths are allowed (:func:`selfsup_core.import_paths.allowing`); then imported and
        accepted only as a class of this registry's kind."""
        prefix = type_name.partition(":")[0]
        if _is_installed_distribution(prefix):
            hint = f" (distribution {prefix!r} provides no {self.kind} of that name)"
            raise UnknownComponentError(self.kind, type_name, (), hint=hint)
        if not _import_paths.allowed():
            raise ImportPathRefused(_import_paths.refusal(type_name, self.kind))
        kind = self.kind

        def load() -> Any:
            obj = import_object(type_name)
            _import_paths.check_class(obj, kind, type_name)
            return obj

        component = Component(self.kind, type_name, IMPORT_PATH, "", type_name, load)
        try:
            component.load()
        except PluginLoadError as exc:
            if isinstance(exc.__cause__, ImportPathRefused):
                raise exc.__cause__ from None
            hint = f": cannot import it ({describe_exception(exc.__cause__)})"
            raise UnknownComponentError(self.kind, type_name, (), hint=hint) from exc.__cause__
        return component

    def get(self, type_name: str) -> Any:
        """The class or factory a ``type`` names, imported now if needed."""
        return self.lookup(type_name).load()

    # -- in-process registration -------------------------------------------------------------
    def register(self, name: Any = None, obj: Any = None, *, force: bool = False) -> Any:
        """Register ``obj`` under ``name`` in this process; usable as a decorator.

        ``registry.register("Name", Class)``, ``@registry.register("Name")`` and
        ``@registry.register`` (the object's ``__name__``) all work. A name that is already
        registered or installed raises :class:`DuplicateComponentError` unless ``force=True``,
        which shadows it until :meth:`unregister`.
        """
        if callable(name) and obj is None:
            return self.register(name.__name__, name, force=force)
        if obj is None:
            return lambda target: self.register(name or target.__name__, target, force=force)
        if not force and name in self:
            existing = [c.provider for c in self.components() if c.name == name]
            raise DuplicateComponentError(
                self.kind,
                name,
                [*existing, IN_PROCESS],
                hint="; pass force=True to shadow it, or use temporary() in tests",
            )
        self._local[name] = Component.from_object(self.kind, name, obj, IN_PROCESS)
        return obj

    def unregister(self, name: str) -> None:
        """Remove an in-process registration (installed components cannot be removed)."""
        if self._local.pop(name, None) is None:
            raise KeyError(f"{self.kind} {name!r} was not registered in-process")

    @contextlib.contextmanager
    def temporary(self, name: str, obj: T) -> Iterator[T]:
        """Register ``obj`` under ``name`` for the duration of a ``with`` block, shadowing any
        existing component of that name, and restore the previous state afterwards."""
        previous = self._local.get(name)
        self._local[name] = Component.from_object(self.kind, name, obj, IN_PROCESS)
        try:
            yield obj
        finally:
            if previous is None:
                self._local.pop(name, None)
            else:
                self._local[name] = previous


def _is_installed_distribution(name: str) -> bool:
    return _import_paths.is_installed_distribution(name)


def _is_module_path(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


class Registries(Mapping[str, Registry]):
    """One :class:`Registry` per kind, sharing one scan of the installed entry points.

    ``discover=False`` gives empty registries (only in-process registrations), as the
    testing fixtures do; ``path`` limits discovery to distributions on those directories.
    ``populate`` is called once, on first use, to add components that plugins register
    through the ``selfsup_register_components`` hook.
    """

    def __init__(
        self,
        *,
        discover: bool = True,
        path: list[str] | None = None,
        populate: Callable[[Registries], None] | None = None,
    ) -> None:
        self.discover = discover
        self.path = path
        self._scan: dict[str, list[EntryPointInfo]] | None = None
        self._populate = populate
        self._registries = {kind: Registry(kind, self._source_for(kind)) for kind in KINDS}

    def _source_for(self, kind: str) -> Callable[[], Iterable[Component]]:
        def source() -> Iterator[Component]:
            for ep in self.entry_points(KINDS[kind]):
                yield Component.from_entry_point(kind, ep)
            populate, self._populate = self._populate, None
            if populate is not None:
                populate(self)

        return source

    def entry_points(self, group: str) -> list[EntryPointInfo]:
        """The entry points of ``group`` (scanned once per :class:`Registries`)."""
        if not self.discover:
            return []
        if self._scan is None:
            self._scan = scan_entry_points(path=self.path)
        return list(self._scan.get(group, ()))

    def add(self, kind: str, name: str, obj: Any, *, dist: str, version: str = "") -> None:
        """Add a component provided by ``dist`` (a plugin's bulk registration)."""
        kind = canonical_kind(kind)
        self._registries[kind].add(Component.from_object(kind, name, obj, dist, version))

    def __getitem__(self, kind: str) -> Registry:
        return self._registries[canonical_kind(kind)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._registries)

    def __len__(self) -> int:
        return len(self._registries)
