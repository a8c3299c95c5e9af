"""The plugin manager: entry-point plugins, isolation, bulk registration, hook order."""
from __future__ import annotations

import pytest

from selfsup_core import hookspecs
from selfsup_core.errors import DuplicateComponentError, PluginLoadError
from selfsup_core.plugins import PluginManager

BULK_PLUGIN = """
from selfsup_core.hookspecs import hookimpl

class Net:
    def __init__(self, width: int = 1):
        self.width = width

@hookimpl
def selfsup_register_components(register):
    for width in (1, 2, 4):
        register("backbones", f"Net-w{width}", Net)
    register("neck", "LazyNeck", "collections:OrderedDict")
"""


def test_selfsup_plugins_are_loaded_and_bulk_registration_is_attributed(selfsup_site):
    selfsup_site.add(
        "acme-family",
        "3.1",
        entry_points={"selfsup.plugins": {"acme": "acme_family_plugin"}},
        modules={"acme_family_plugin.py": BULK_PLUGIN},
    )
    registries = selfsup_site.registries()
    backbones = registries["backbones"]
    assert backbones.names() == ["Net-w1", "Net-w2", "Net-w4"]
    assert {(c.dist, c.version) for c in backbones.components()} == {("acme-family", "3.1")}
    assert registries["necks"].get("LazyNeck").__name__ == "OrderedDict"


def test_bulk_registered_name_clashing_with_an_entry_point_is_a_duplicate(selfsup_site):
    selfsup_site.add(
        "acme-family",
        entry_points={"selfsup.plugins": {"acme": "acme_family_dup"}},
        modules={"acme_family_dup.py": BULK_PLUGIN},
    )
    selfsup_site.add(
        "rival",
        entry_points={"selfsup.backbones": {"Net-w2": "collections:OrderedDict"}},
    )
    backbones = selfsup_site.registries()["backbones"]
    with pytest.raises(DuplicateComponentError) as info:
        backbones.lookup("Net-w2")
    assert "acme-family 0.1.0" in str(info.value) and "rival 0.1.0" in str(info.value)
    assert backbones.lookup("rival:Net-w2").target == "collections:OrderedDict"


def test_broken_plugins_are_listed_with_their_error_and_others_load(selfsup_site):
    selfsup_site.add(
        "bad-import",
        entry_points={"selfsup.plugins": {"bad": "bad_import_plugin"}},
        modules={"bad_import_plugin.py": "import not_a_module_anywhere\n"},
    )
    selfsup_site.add(
        "bad-hook",
        entry_points={"selfsup.plugins": {"typo": "bad_hook_plugin"}},
        modules={"bad_hook_plugin.py": "def selfsup_befor_run(runner):\n    pass\n"},
    )
    selfsup_site.add(
        "bad-register",
        entry_points={"selfsup.plugins": {"raiser": "bad_register_plugin"}},
        modules={"bad_register_plugin.py": "def selfsup_register_components(register):\n    raise ValueError('nope')\n"},
    )
    selfsup_site.add(
        "fine",
        entry_points={"selfsup.plugins": {"fine": "fine_plugin"}},
        modules={"fine_plugin.py": BULK_PLUGIN},
    )
    manager = selfsup_site.plugin_manager()
    from selfsup_core.registry import Registries

    registries = Registries(path=[str(selfsup_site.root)], populate=manager.register_components)
    assert registries["backbones"].names() == ["Net-w1", "Net-w2", "Net-w4"]
    broken = {b.name: str(b) for b in manager.broken}
    assert set(broken) == {"bad", "typo", "raiser"}
    assert "bad (bad-import 0.1.0): import failed: ModuleNotFoundError" in broken["bad"]
    assert "unknown hook 'selfsup_befor_run'; did you mean 'selfsup_before_run'?" in broken["typo"]
    assert "selfsup_register_components failed: ValueError: nope" in broken["raiser"]
    assert manager.has_plugin("fine") and not manager.has_plugin("typo")


def test_disabled_plugin_is_not_loaded(selfsup_site, monkeypatch):
    selfsup_site.add(
        "fine",
        entry_points={"selfsup.plugins": {"fine": "fine_plugin_d"}},
        modules={"fine_plugin_d.py": BULK_PLUGIN},
    )
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGINS", "fine")
    assert not selfsup_site.plugin_manager().has_plugin("fine")


class _Tracer:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def selfsup_before_epoch(self, runner):  # unmarked implementations are accepted
        self.log.append(self.name)


def test_hook_order_is_the_documented_one():
    log: list[str] = []
    manager = PluginManager(load_entry_points=False)
    manager.register(_Tracer("installed-a", log), name="a")
    manager.register(_Tracer("installed-b", log), name="b")

    class Last(_Tracer):
        @hookspecs.hookimpl(trylast=True)
        def selfsup_before_epoch(self, runner):
            self.log.append(self.name)

    class First(_Tracer):
        @hookspecs.hookimpl(tryfirst=True)
        def selfsup_before_epoch(self, runner):
            self.log.append(self.name)

    manager.register(Last("last", log), name="last")
    manager.register_in_order([("h1", _Tracer("config-1", log)), ("h2", _Tracer("config-2", log))])
    manager.register(First("first", log), name="first")
    manager.hook.selfsup_before_epoch(runner=None)
    # tryfirst; configured hooks in config order; installed plugins newest first; trylast
    assert log == ["first", "config-1", "config-2", "installed-b", "installed-a", "last"]


def test_register_in_order_refuses_a_hook_with_a_typo():
    class Typo:
        def selfsup_after_iterr(self, runner, outputs):
            pass

    manager = PluginManager(load_entry_points=False)
    with pytest.raises(PluginLoadError, match="did you mean 'selfsup_after_iter'"):
        manager.register_in_order([("typo", Typo())])


def test_hook_recorder_sees_calls_in_order(selfsup_plugin_manager, selfsup_hook_recorder):
    selfsup_plugin_manager.register(_Tracer("x", []), name="x")
    selfsup_plugin_manager.hook.selfsup_before_run(runner="r")
    selfsup_plugin_manager.hook.selfsup_before_epoch(runner="r")
    selfsup_plugin_manager.hook.selfsup_after_iter(runner="r", outputs={"loss": 1.0})
    assert selfsup_hook_recorder.names() == ["selfsup_before_run", "selfsup_before_epoch", "selfsup_after_iter"]
    assert selfsup_hook_recorder.calls[2].kwargs == {"runner": "r", "outputs": {"loss": 1.0}}


def test_resolve_checkpoint_takes_the_first_answer(selfsup_plugin_manager):
    class Never:
        def selfsup_resolve_checkpoint(self, uri):
            return None

    class Torchvision:
        def selfsup_resolve_checkpoint(self, uri):
            return "/cache/resnet50.pth" if uri.startswith("torchvision://") else None

    selfsup_plugin_manager.register(Torchvision(), name="tv")
    selfsup_plugin_manager.register(Never(), name="never")
    assert selfsup_plugin_manager.hook.selfsup_resolve_checkpoint(uri="torchvision://resnet50") == "/cache/resnet50.pth"
    assert selfsup_plugin_manager.hook.selfsup_resolve_checkpoint(uri="other://x") is None


def test_every_hookspec_is_documented():
    names = [n for n in dir(hookspecs) if n.startswith("selfsup_")]
    assert len(names) == 19
    for name in names:
        assert (getattr(hookspecs, name).__doc__ or "").strip(), name


def test_plugin_manager_fixture_does_not_leak_registries(selfsup_plugin_manager):
    from selfsup_core import registry, session

    class Bulk:
        def selfsup_register_components(self, register):
            register("backbones", "BulkNet", dict)

    selfsup_plugin_manager.register(Bulk(), name="bulk")
    with session.use(registries=registry.Registries(discover=False, populate=selfsup_plugin_manager.register_components)):
        assert session.get("backbones").names() == ["BulkNet"]
        assert session.get("backbones").lookup("BulkNet").dist == "bulk"
    assert "BulkNet" in session.get("backbones")  # the test's session takes the test's manager ...


def test_after_the_fixture_the_defaults_are_clean():  # ... and are gone afterwards
    from selfsup_core import session

    assert "BulkNet" not in session.get("backbones")


def test_a_plugin_command_without_a_runner_is_one_line(selfsup_plugin_manager, capsys):
    from selfsup_core.cli import main

    class Forgetful:
        @hookspecs.hookimpl
        def selfsup_register_commands(self, commands):
            commands.add_parser("forgetful", help="declares itself but nothing that runs it")

    selfsup_plugin_manager.register(Forgetful())
    assert main(["forgetful"]) == 2
    assert capsys.readouterr().err == ("error: command 'forgetful' (from a plugin) does not say what runs it: "
                                       "its parser must set_defaults(selfsup_run=FUNCTION)\n")
