"""The session: what one process knows about the installed selfsup, in one object.

A :class:`Session` owns the single scan of the installed entry points (see
:mod:`selfsup_core.discovery`), the plugin manager loaded from it, the component registries
filled from the same scan and from the plugins' ``selfsup_register_components`` hooks, and
config preparation (the plugins' ``selfsup_process_config`` hooks, checkpoint references
through ``selfsup_resolve_checkpoint``). The CLI, :class:`~selfsup_core.engine.trainer.Trainer`
and library code all go through the process-wide session, :func:`current`::

    from selfsup_core.api import Session, Trainer
    session = Session.current()
    config = session.load_config("simclr.toml", ["optimizer.lr=0.1"])
    Trainer(config, session=session, work_dir="runs/simclr").run()

Layering (no import cycles): ``discovery`` <- ``plugins`` (the manager) and ``registry`` (the
registries; neither imports the other) <- ``session`` (which joins them).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from . import plugins as _plugins
from . import registry as _registry
from .discovery import clear_scan_cache

if TYPE_CHECKING:
    from .config import Config


class Session:
    """The plugin manager, the registries and config preparation of one set of installed
    distributions.

    ``discover=False`` starts with no plugins and no entry-point components (hermetic tests);
    ``path`` limits discovery to distributions on those directories. ``plugin_manager`` and
    ``registries`` replace the ones the session would make; both are otherwise made on first
    use, from the same (cached) entry-point scan.
    """

    def __init__(
        self,
        *,
        discover: bool = True,
        path: list[str] | None = None,
        plugin_manager: _plugins.PluginManager | None = None,
        registries: _registry.Registries | None = None,
    ) -> None:
        self.discover = discover
        self.path = path
        self._plugin_manager = plugin_manager
        self._registries = registries

    @classmethod
    def current(cls) -> Session:
        """The process-wide session (see :func:`current`)."""
        return current()

    @property
    def plugin_manager(self) -> _plugins.PluginManager:
        """The plugin manager: installed ``selfsup.plugins`` entry points, loaded on first use."""
        if self._plugin_manager is None:
            self._plugin_manager = _plugins.PluginManager(load_entry_points=self.discover, path=self.path)
        return self._plugin_manager

    @property
    def registries(self) -> _registry.Registries:
        """The component registries: entry-point components plus the plugin manager's bulk
        registrations (``selfsup_register_components``), added on first lookup."""
        if self._registries is None:
            self._registries = _registry.Registries(
                discover=self.discover,
                path=self.path,
                populate=lambda registries: self.plugin_manager.register_components(registries),
            )
        return self._registries

    def prepare(self, config: Config) -> Config:
        """Run the plugins' ``selfsup_process_config`` hooks on ``config``, once
        (``config.processed`` records it); returns ``config``."""
        if not config.processed:
            self.plugin_manager.hook.selfsup_process_config(config=config)
            config.processed = True
        return config

    def load_config(self, path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
        """Load the TOML config at ``path`` with ``--cfg-options`` style ``overrides`` and
        prepare it (:meth:`prepare`)."""
        from .config import load_config

        return self.prepare(load_config(path, overrides))

    def resolve_checkpoint(self, reference: str, what: str) -> str:
        """A local checkpoint file for ``reference``: the path itself when it is a file, else
        the first answer of the plugins' ``selfsup_resolve_checkpoint`` hooks.

        ``what`` names the setting in errors (``"--resume"``, ``"init_cfg Pretrained"``).
        Raises :class:`~selfsup_core.errors.SelfSupError` with one line when the reference is
        no file and no plugin resolves it to an existing file.
        """
        from .errors import SelfSupError

        path = os.path.expanduser(str(reference))
        if os.path.isfile(path):
            return path
        answer = self.plugin_manager.hook.selfsup_resolve_checkpoint(uri=str(reference))
        if isinstance(answer, list):  # a caller registered the spec without firstresult
            answer = next((a for a in answer if a is not None), None)
        if answer is None:
            hint = "no installed plugin resolves it" if "://" in path else "no such checkpoint file"
            raise SelfSupError(f"{what} {reference}: {hint} (nothing is downloaded; give a local file)")
        resolved = os.fspath(answer)
        if not os.path.isfile(resolved):
            raise SelfSupError(f"{what} {reference}: a plugin resolved it to {resolved}, which is not a file")
        return resolved


_current: Session | None = None


def current() -> Session:
    """The process-wide session: every installed plugin, discovered on first use."""
    global _current
    if _current is None:
        _current = Session()
    return _current


def registries() -> _registry.Registries:
    """The process-wide session's registries."""
    return current().registries


def get(kind: str) -> _registry.Registry:
    """The registry of ``kind`` (``"backbones"``, ``"backbone"``, ...) in the process-wide session."""
    return current().registries[kind]


def plugin_manager() -> _plugins.PluginManager:
    """The process-wide session's plugin manager."""
    return current().plugin_manager


def resolve_checkpoint(reference: str, what: str) -> str:
    """:meth:`Session.resolve_checkpoint` of the process-wide session."""
    return current().resolve_checkpoint(reference, what)


@contextlib.contextmanager
def use(
    session: Session | None = None,
    *,
    registries: _registry.Registries | None = None,
    plugin_manager: _plugins.PluginManager | None = None,
) -> Iterator[Session]:
    """Make a session the process-wide one inside a ``with`` block.

    Either ``session`` itself, or one made of ``registries`` and/or ``plugin_manager``: given
    registries alone keep the current plugin manager; a plugin manager alone gets fresh
    registries that take its plugins' bulk registrations.
    """
    global _current
    if session is None:
        manager = plugin_manager
        if manager is None and registries is not None:
            manager = current().plugin_manager
        session = Session(plugin_manager=manager, registries=registries)
    previous, _current = _current, session
    try:
        yield session
    finally:
        _current = previous


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Whatever session a ``with`` block makes or swaps in, put back the one in use before
    it (or the not yet made default) when it ends."""
    global _current
    previous = _current
    try:
        yield
    finally:
        _current = previous


def reset() -> None:
    """Forget the process-wide session: the next use scans and loads the plugins again."""
    global _current
    _current = None
    clear_scan_cache()
