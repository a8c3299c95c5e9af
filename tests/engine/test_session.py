"""The session: one object owning the entry-point scan, the plugin manager, the registries
and config preparation, used by the CLI, the Trainer and library code alike."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from selfsup_core import discovery, session
from selfsup_core.config import load_config
from selfsup_core.engine.trainer import Trainer
from selfsup_core.errors import SelfSupError
from selfsup_core.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[2]

SITE_PLUGIN = """
from selfsup_core.api import hookimpl

calls = []

@hookimpl
def selfsup_register_components(register):
    register("necks", "BulkNeck", dict)

@hookimpl
def selfsup_process_config(config):
    calls.append(config.filename)
    config.data.setdefault("runner", {})["max_epochs"] = 7
"""


def _site_with_plugin(selfsup_site, *, only_the_site: bool = True):
    selfsup_site.add(
        "acme-session",
        entry_points={"selfsup.plugins": {"acme": "acme_session"}, "selfsup.backbones": {"AcmeNet": "acme_session:dict"}},
        modules={"acme_session.py": SITE_PLUGIN},
    )
    return selfsup_site.session() if only_the_site else session.Session()  # the site is on sys.path


def test_one_session_joins_its_plugins_registries_and_one_scan(selfsup_site):
    discovery.clear_scan_cache()
    before = discovery.scan_count()
    site_session = _site_with_plugin(selfsup_site)
    assert site_session.plugin_manager.has_plugin("acme")
    assert site_session.registries["backbones"].names() == ["AcmeNet"]  # entry point
    assert site_session.registries["necks"].lookup("BulkNeck").dist == "acme-session"  # the plugin's hook
    assert discovery.scan_count() == before + 1  # the manager and the registries share the scan


def test_the_session_prepares_a_config_once(selfsup_site, write_config):
    site_session = _site_with_plugin(selfsup_site, only_the_site=False)
    config = site_session.load_config(write_config())
    assert config.processed and config.get("runner.max_epochs") == 7
    calls = __import__("acme_session").calls
    assert len(calls) == 1
    site_session.prepare(config)
    Trainer(config, session=site_session, work_dir=selfsup_site.root / "run")  # prepared already: not again
    assert len(calls) == 1


def test_trainer_and_library_code_use_the_process_wide_session(selfsup_site, write_config):
    site_session = _site_with_plugin(selfsup_site, only_the_site=False)
    with session.use(site_session):
        assert session.current() is site_session and session.Session.current() is site_session
        assert session.get("necks").lookup("BulkNeck").dist == "acme-session"
        trainer = Trainer(load_config(write_config()), work_dir=selfsup_site.root / "run")
        assert trainer.session is site_session and trainer.registries is site_session.registries
        assert trainer.config.get("runner.max_epochs") == 7  # selfsup_process_config ran on the Trainer path
    assert session.current() is not site_session


def test_resolve_checkpoint_asks_the_plugins_and_names_the_setting(tmp_path, selfsup_plugin_manager):
    ckpt = tmp_path / "a.pth"
    ckpt.write_bytes(b"x")

    class Store:
        @hookimpl
        def selfsup_resolve_checkpoint(self, uri):
            return str(ckpt) if uri == "store://a" else None

    selfsup_plugin_manager.register(Store())
    assert session.resolve_checkpoint(str(ckpt), "--resume") == str(ckpt)
    assert session.resolve_checkpoint("store://a", "--resume") == str(ckpt)
    with pytest.raises(SelfSupError, match=r"^--resume store://b: no installed plugin resolves it"):
        session.resolve_checkpoint("store://b", "--resume")
    with pytest.raises(SelfSupError, match=r"^init_cfg Pretrained nope\.pth: no such checkpoint file"):
        session.resolve_checkpoint("nope.pth", "init_cfg Pretrained")


def test_the_core_has_no_import_cycles():
    """Every import of ``selfsup_core`` (module level and inside functions) forms a DAG:
    ``discovery`` <- ``plugins`` / ``registry`` <- ``session`` <- ``build``/engine <- ``cli``."""
    script = runpy.run_path(str(ROOT / "benchmarks" / "import_graph.py"))
    graph = script["module_graph"](ROOT / "selfsup_core")
    assert "selfsup_core.session" in graph["selfsup_core.engine.trainer"]
    assert script["cycles"](graph) == []
