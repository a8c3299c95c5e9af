"""The plugin manager: loads ``selfsup.plugins`` entry points and isolates broken plugins.

A plugin that fails to import, declares a hook selfsup does not know, or raises while
registering components is recorded in :attr:`PluginManager.broken` with its error and
unregistered; everything else keeps working. See :mod:`selfsup_core.discovery` for the
environment switches that disable autoloading or single plugins, and
:mod:`selfsup_core.session` for the process-wide manager.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Protocol

import attrs
import pluggy

from . import hookspecs
from .discovery import PLUGIN_GROUP, EntryPointInfo, scan_entry_points
from .errors import PluginLoadError, describe_exception, did_you_mean



class ComponentSink(Protocol):
    """What :meth:`PluginManager.register_components` adds to (the registries)."""

    def add(self, kind: str, name: str, obj: Any, *, dist: str, version: str = "") -> None: ...

HOOK_PREFIX = "selfsup_"


@attrs.frozen
class BrokenPlugin:
    """A plugin that could not be used, and why."""

    name: str
    provider: str
    stage: str
    error: BaseException = attrs.field(eq=False)

    def __str__(self) -> str:
        return f"{self.name} ({self.provider}): {self.stage} failed: {describe_exception(self.error)}"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with selfsup's hook specs, entry-point loading and isolation."""

    def __init__(self, *, load_entry_points: bool = True, path: list[str] | None = None) -> None:
        """``load_entry_points=False`` starts empty; ``path`` limits discovery to those directories."""
        super().__init__("selfsup")
        self.add_hookspecs(hookspecs)
        self.broken: list[BrokenPlugin] = []
        self._providers: dict[str, str] = {}
        if load_entry_points:
            self.load_entry_point_plugins(scan_entry_points(path=path).get(PLUGIN_GROUP, ()))

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """Accept unmarked ``selfsup_*`` functions as implementations (as pytest does)."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            method = getattr(plugin, name, None)
            if inspect.isroutine(method):
                opts = {
                    "wrapper": False,
                    "hookwrapper": False,
                    "optionalhook": False,
                    "tryfirst": False,
                    "trylast": False,
                    "specname": None,
                }
        return opts

    def load_entry_point_plugins(self, entry_points: Iterable[EntryPointInfo]) -> list[str]:
        """Import and register plugins, sorted by entry-point name; return the names loaded."""
        loaded = []
        for ep in sorted(entry_points, key=lambda e: e.name):
            if self.has_plugin(ep.name) or self.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - isolate any failure of plugin code
                self.broken.append(BrokenPlugin(ep.name, ep.provider, "import", exc))
                continue
            if self.add_plugin(plugin, ep.name, ep.provider):
                loaded.append(ep.name)
        return loaded

    def add_plugin(self, plugin: Any, name: str, provider: str) -> bool:
        """Register ``plugin``; on a bad hook record it as broken instead of raising."""
        try:
            self.register(plugin, name=name)
            self.check_plugin(name)
        except Exception as exc:  # noqa: BLE001 - pluggy validation or our check
            if self.has_plugin(name):
                self.unregister(name=name)
            self.broken.append(BrokenPlugin(name, provider, "registration", exc))
            return False
        self._providers[name] = provider
        return True

    def register_in_order(self, plugins: Iterable[tuple[str, Any]]) -> None:
        """Register ``(name, plugin)`` pairs so that their hooks are called in list order.

        Raises :class:`PluginLoadError` for a plugin with a bad hook (configured hooks are
        the user's own: failing loudly is better than running without them).
        """
        for name, plugin in reversed(list(plugins)):
            self.register(plugin, name=name)
            self.check_plugin(name)

    def check_plugin(self, name: str) -> None:
        """Raise :class:`PluginLoadError` if plugin ``name`` implements an unknown hook."""
        plugin = self.get_plugin(name)
        known = [h for h in dir(self.hook) if h.startswith(HOOK_PREFIX) and getattr(self.hook, h).has_spec()]
        for hook in self.get_hookcallers(plugin) or ():
            if hook.name.startswith(HOOK_PREFIX) and not hook.has_spec():
                optional = all(impl.optionalhook for impl in hook.get_hookimpls())
                if not optional:
                    raise PluginLoadError(
                        f"plugin {name!r} implements unknown hook {hook.name!r}{did_you_mean(hook.name, known)}"
                    )

    def check_pending(self) -> None:
        """pluggy's check, with selfsup's one-line error and a did-you-mean."""
        for name, _ in self.list_name_plugin():
            self.check_plugin(name)

    def provider(self, name: str) -> str:
        """``"distribution version"`` of a plugin loaded from an entry point, else its name."""
        return self._providers.get(name, name)

    def register_components(self, registries: ComponentSink) -> None:
        """Call each plugin's ``selfsup_register_components`` with a ``register`` callback
        that attributes the components to the plugin's distribution."""
        for impl in self.hook.selfsup_register_components.get_hookimpls():
            dist, _, version = self.provider(impl.plugin_name).partition(" ")

            def register(kind: str, name: str, obj: Any, _dist: str = dist, _version: str = version) -> None:
                registries.add(kind, name, obj, dist=_dist, version=_version)

            try:
                impl.function(register=register)
            except Exception as exc:  # noqa: BLE001 - isolate any failure of plugin code
                self.broken.append(
                    BrokenPlugin(impl.plugin_name, self.provider(impl.plugin_name), "selfsup_register_components", exc)
                )
