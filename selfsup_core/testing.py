"""pytest fixtures for selfsup and for plugin authors (loaded through the ``pytest11`` entry point).

Fixtures:

``selfsup_registries``
    fresh, empty registries with discovery blocked, in use for the test; register
    temporary components with ``selfsup_registries["backbones"].register("Net", Net)``.
``selfsup_plugin_manager``
    a fresh plugin manager with no plugins loaded, in use for the test.
``selfsup_hook_recorder``
    a :class:`HookRecorder` of every hook called on ``selfsup_plugin_manager``.
``selfsup_site``
    a :class:`FakeSite`: writes real ``*.dist-info`` distributions (metadata, entry points,
    modules) to a temporary directory on ``sys.path``, for discovery tests without mocks.

Helpers: :func:`components_of` lists a distribution's components and
:func:`assert_validated_from_config` checks that a misspelt TOML key of a component is the
core's ConfigError (parametrize a test over the first with the second).
:func:`run_ranks` runs a script as the processes of one gloo job.
:func:`derive_config` writes a config that inherits a shipped one with tables replaced (e.g.
its data source by a small ``.npz``), :func:`run_selfsup` runs ``selfsup-run`` in a real
subprocess and :func:`read_metrics` reads the run's ``metrics.jsonl``.

This module must stay cheap to import (pytest loads it in every session): no torch.
"""
from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from . import plugins as _plugins
from . import registry as _registry
from . import session as _session
from .discovery import normalize_name


@attrs.define
class HookCall:
    """One hook call: its name and keyword arguments."""

    name: str
    kwargs: dict[str, Any]


@attrs.define
class HookRecorder:
    """Records the hooks called on a plugin manager, in order."""

    calls: list[HookCall] = attrs.field(factory=list)

    def names(self) -> list[str]:
        return [call.name for call in self.calls]

    def clear(self) -> None:
        self.calls.clear()

    def attach(self, manager: _plugins.PluginManager) -> HookRecorder:
        def before(hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
            self.calls.append(HookCall(hook_name, dict(kwargs)))

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Mapping[str, Any]) -> None:
            return None

        manager.add_hookcall_monitoring(before, after)
        return self


def write_distribution(
    root: Path,
    name: str,
    version: str = "0.1.0",
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    modules: Mapping[str, str] | None = None,
) -> Path:
    """Write an installed distribution (``NAME-VERSION.dist-info``) and its modules under ``root``.

    ``entry_points`` maps groups to ``{entry name: "module:attr"}``; ``modules`` maps file
    paths relative to ``root`` (``"pkg/__init__.py"``) to source text. Returns the dist-info
    directory. This is what pip writes, so :mod:`importlib.metadata` finds it for real.
    """
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{normalize_name(name).replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = []
    for group, entries in (entry_points or {}).items():
        lines.append(f"[{group}]")
        lines.extend(f"{entry} = {target}" for entry, target in entries.items())
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    for relative, source in (modules or {}).items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source, encoding="utf-8")
    return info


@attrs.define
class FakeSite:
    """A temporary site directory on ``sys.path`` holding generated distributions."""

    root: Path
    modules: set[str] = attrs.field(factory=set)

    def add(
        self,
        name: str,
        version: str = "0.1.0",
        entry_points: Mapping[str, Mapping[str, str]] | None = None,
        modules: Mapping[str, str] | None = None,
    ) -> Path:
        """Install a distribution into this site (see :func:`write_distribution`)."""
        info = write_distribution(self.root, name, version, entry_points, modules)
        self.modules.update(Path(p).parts[0].removesuffix(".py") for p in (modules or {}))
        importlib.invalidate_caches()
        return info

    def registries(self) -> _registry.Registries:
        """Registries discovering only this site's distributions, with its plugins' bulk
        registrations (through :meth:`plugin_manager`)."""
        manager = self.plugin_manager()
        return _registry.Registries(path=[str(self.root)], populate=manager.register_components)

    def plugin_manager(self) -> _plugins.PluginManager:
        """A plugin manager that loaded this site's ``selfsup.plugins`` entry points."""
        return _plugins.PluginManager(path=[str(self.root)])

    def session(self) -> _session.Session:
        """A session that sees only this site's distributions (plugins and components)."""
        return _session.Session(path=[str(self.root)])

    def cleanup(self) -> None:
        for name in list(sys.modules):
            if name.split(".")[0] in self.modules:
                del sys.modules[name]


@pytest.fixture
def selfsup_registries() -> Iterator[_registry.Registries]:
    """Empty registries (discovery blocked) in use for the duration of the test."""
    with _session.use(registries=_registry.Registries(discover=False)) as session:
        yield session.registries


@pytest.fixture
def selfsup_plugin_manager() -> Iterator[_plugins.PluginManager]:
    """A plugin manager with no plugins, in use for the duration of the test.

    Registries first used during the test take bulk registrations from this manager; they
    are dropped afterwards, so nothing leaks into later tests.
    """
    with _session.use(plugin_manager=_plugins.PluginManager(load_entry_points=False)) as session:
        yield session.plugin_manager


@pytest.fixture
def selfsup_hook_recorder(selfsup_plugin_manager: _plugins.PluginManager) -> HookRecorder:
    """Records every hook called on ``selfsup_plugin_manager``."""
    return HookRecorder().attach(selfsup_plugin_manager)


@pytest.fixture
def selfsup_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSite]:
    """A temporary site directory on ``sys.path`` for generated distributions."""
    site = FakeSite(tmp_path / "site")
    site.root.mkdir()
    monkeypatch.syspath_prepend(str(site.root))
    yield site
    site.cleanup()


# -- helpers for plugin test suites ------------------------------------------------------------
def components_of(dist: str, kinds: Any = None, *, own_modules: str | None = None) -> list[tuple[str, str]]:
    """``(kind, name)`` of every installed component that distribution ``dist`` provides, in
    ``kinds`` (default: all); ``own_modules`` keeps only targets in that package (skipping
    re-exported third-party classes such as torchvision transforms)."""
    registries = _session.registries()
    found = []
    for kind in kinds or list(_registry.KINDS):
        for component in registries[kind].components():
            if component.dist != dist:
                continue
            if own_modules is not None and not component.target.startswith(own_modules):
                continue
            found.append((kind, component.name))
    return found


def assert_validated_from_config(kind: str, name: str) -> None:
    """Assert that the core validates every TOML key of component ``name``: its constructor
    does not swallow unknown keys (``**kwargs`` all the way up), and a misspelt key is a
    :class:`~selfsup_core.errors.ConfigError` naming it, not a TypeError from inside."""
    from .build import accepted_parameters, build
    from .errors import ConfigError

    factory = _session.registries()[kind].get(name)
    _, open_ended = accepted_parameters(factory)
    assert not open_ended, f"{name} accepts **kwargs: the core cannot catch a misspelt key"
    with pytest.raises(ConfigError, match=r"no_such_argument: unknown argument of " + name):
        build({"type": name, "no_such_argument": 1}, kind)


def derive_config(base: str | os.PathLike[str], out: str | os.PathLike[str],
                  replace: Mapping[str, Mapping[str, Any]] | None = None,
                  values: Mapping[str, Any] | None = None) -> Path:
    """Write a config ``out`` that inherits ``base`` (``_base_``), replaces whole tables
    (``replace``: dotted key -> new table, written with ``_delete_ = true``) and sets single
    values (``values``: dotted key -> value). Returns ``out``.

    For tests and benchmarks that run a shipped config on other data, e.g.
    ``replace={"data.train.data_source": {"type": "NumpyArrays", "file": "x.npz"}}``.
    """
    from .config import dump_toml

    data: dict[str, Any] = {"_base_": [str(Path(base).resolve())]}

    def table_at(dotted: str) -> tuple[dict[str, Any], str]:
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        return node, leaf

    for dotted, table in (replace or {}).items():
        node, leaf = table_at(dotted)
        node[leaf] = {"_delete_": True, **table}
    for dotted, value in (values or {}).items():
        node, leaf = table_at(dotted)
        node[leaf] = value
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_toml(data), encoding="utf-8")
    return out


def run_selfsup(*args: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None,
                timeout: float = 600, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``selfsup-run ARGS...`` in a real subprocess (the interpreter running the tests, so
    the same environment) and return the completed process with text stdout/stderr. Does not
    raise on a non-zero exit: assert on ``returncode`` and show ``stderr``."""
    command = [sys.executable, "-m", "selfsup_core.cli", *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_srun(command: Sequence[str], env: Mapping[str, str], *, world: int = 2, ranks: Sequence[int] | None = None,
              timeout: float = 120) -> list[subprocess.CompletedProcess]:
    """Start ``command`` as the tasks of a fake ``srun`` job and wait for them.

    Each task gets Slurm's variables only (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``,
    a node list that starts with localhost, and a ``SLURM_JOB_ID`` whose rendezvous port,
    ``12000 + id % 20000`` as selfsup derives it, is free now) on top of ``env``. ``ranks``
    starts only those tasks (default: all ``world``). Returns one CompletedProcess per task.
    """
    from .engine.slurm import PORT_BASE, PORT_SPAN

    port = next((p for p in range(PORT_BASE + os.getpid() % 5000, PORT_BASE + PORT_SPAN) if _bindable(p)), None)
    if port is None:
        raise RuntimeError(f"no free port in [{PORT_BASE}, {PORT_BASE + PORT_SPAN})")
    procs = []
    for rank in range(world) if ranks is None else ranks:
        task = dict(env, SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank),
                    SLURM_JOB_NODELIST="localhost,gpu-a[01-03]", SLURM_JOB_ID=str(port - PORT_BASE))
        procs.append(subprocess.Popen(list(command), env=task, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_ranks(script: str | os.PathLike[str], *args: str | os.PathLike[str], world_size: int = 2,
              timeout: float = 300) -> None:
    """Run ``python SCRIPT ARGS...`` as ``world_size`` processes of one torch.distributed job,
    as torchrun would start them (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
    ``MASTER_PORT``; one OpenMP thread each), and wait for all of them. An AssertionError with
    the output of the first process that failed; the script's results go to files it writes."""
    env = {**os.environ, "WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(script), *map(str, args)]
    procs = [subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(world_size)]
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, output) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} of {Path(script).name} exited with {proc.returncode}:\n{output[-3000:]}"


def read_metrics(work_dir: str | os.PathLike[str], mode: str | None = None) -> list[dict[str, Any]]:
    """The records of ``work_dir/metrics.jsonl`` (only those of ``mode``, e.g. ``"train"``)."""
    lines = (Path(work_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if mode is None or r.get("mode") == mode]


def assert_bitwise_equal(a: Any, b: Any, where: str = "") -> None:
    """Assert that two states (tensors, nested dicts, lists and plain values, as in a
    checkpoint) are equal to the bit: same keys, lengths, dtypes, shapes and values.
    ``where`` prefixes the failing key path in the message."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_close_weights(a: Mapping[str, Any], b: Mapping[str, Any], rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Assert that two state dicts have the same keys and values equal to ``rtol``/``atol``
    (runs that differ only in how the batch was split over processes)."""
    import torch

    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=rtol, atol=atol, msg=lambda m, key=key: f"{key}: {m}")
