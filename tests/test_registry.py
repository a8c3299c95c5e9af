"""Registries backed by real entry points (generated *.dist-info on a temporary path)."""
from __future__ import annotations

import pytest

from selfsup_core import registry
from selfsup_core.errors import DuplicateComponentError, PluginLoadError, SelfSupError, UnknownComponentError

NETS = """
class Net:
    def __init__(self, depth: int = 18):
        self.depth = depth
class Other:
    pass
"""


def _net_dist(site, dist, module, version="0.1.0", names=("Net",)):
    site.add(
        dist,
        version,
        entry_points={"selfsup.backbones": {n: f"{module}:Net" for n in names}},
        modules={f"{module}.py": NETS},
    )


def test_discovery_lists_names_with_distribution_and_version_without_importing(selfsup_site):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_a", "1.2.3", names=("Net", "NetB"))
    registries = selfsup_site.registries()
    backbones = registries["backbones"]
    assert backbones.names() == ["Net", "NetB"]
    assert [(c.name, c.dist, c.version, c.target) for c in backbones.components()] == [
        ("Net", "acme-nets", "1.2.3", "acme_nets_a:Net"),
        ("NetB", "acme-nets", "1.2.3", "acme_nets_a:Net"),
    ]
    import sys

    assert "acme_nets_a" not in sys.modules  # listing is metadata only
    assert backbones.get("Net")(depth=50).depth == 50
    assert "acme_nets_a" in sys.modules
    assert registries["algorithms"].names() == []


def test_wildcard_listing(selfsup_site):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_w", names=("ResNet", "ResNeXt", "ViT"))
    backbones = selfsup_site.registries()["backbone"]
    assert backbones.list("Res*") == ["ResNet", "ResNeXt"]
    assert backbones.list(["ViT", "ResN*t"], exclude="ResNeXt") == ["ResNet", "ViT"]


def test_duplicate_across_distributions_names_both_and_qualified_name_resolves(selfsup_site):
    _net_dist(selfsup_site, "alpha-models", "alpha_models_mod", "1.0")
    _net_dist(selfsup_site, "beta_models", "beta_models_mod", "2.0")
    backbones = selfsup_site.registries()["backbones"]
    with pytest.raises(DuplicateComponentError) as info:
        backbones.lookup("Net")
    message = str(info.value)
    assert "backbones 'Net'" in message
    assert "alpha-models 1.0" in message and "beta_models 2.0" in message
    assert "alpha-models:Net" in message  # tells how to qualify
    assert backbones.lookup("alpha-models:Net").target == "alpha_models_mod:Net"
    assert backbones.lookup("beta-models:Net").dist == "beta_models"  # normalised dist names
    assert backbones.lookup("Beta.Models:Net").dist == "beta_models"


def test_duplicate_metadata_of_one_distribution_is_collapsed(selfsup_site, tmp_path, monkeypatch):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_dup", "0.2.0")
    from selfsup_core.testing import write_distribution

    stale = tmp_path / "stale"
    write_distribution(stale, "acme_nets", "0.1.0", {"selfsup.backbones": {"Net": "acme_nets_dup:Net"}})
    registries = registry.Registries(path=[str(selfsup_site.root), str(stale)])
    component = registries["backbones"].lookup("Net")
    assert (component.dist, component.version) == ("acme-nets", "0.2.0")  # first on the path wins
    assert len(registries["backbones"].components()) == 1


def test_broken_component_is_isolated_and_error_is_chained(selfsup_site):
    selfsup_site.add(
        "broken-plugin",
        entry_points={"selfsup.backbones": {"Broken": "broken_mod_x:Net"}},
        modules={"broken_mod_x.py": "raise RuntimeError('boom at import')\n"},
    )
    _net_dist(selfsup_site, "good-plugin", "good_mod_x")
    backbones = selfsup_site.registries()["backbones"]
    assert backbones.names() == ["Broken", "Net"]
    with pytest.raises(PluginLoadError) as info:
        backbones.get("Broken")
    assert "broken-plugin 0.1.0" in str(info.value) and "RuntimeError: boom at import" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert backbones.get("Net")().depth == 18  # the others still work
    with pytest.raises(PluginLoadError):  # remembered, not retried silently
        backbones.get("Broken")


def test_entry_point_that_is_not_callable_is_broken(selfsup_site):
    selfsup_site.add(
        "odd-plugin",
        entry_points={"selfsup.heads": {"Odd": "odd_mod_x:VALUE"}},
        modules={"odd_mod_x.py": "VALUE = 3\n"},
    )
    with pytest.raises(PluginLoadError, match="not a class or factory"):
        selfsup_site.registries()["heads"].get("Odd")


def test_unknown_name_suggests_the_closest(selfsup_site):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_u", names=("ResNet",))
    backbones = selfsup_site.registries()["backbones"]
    with pytest.raises(UnknownComponentError, match="did you mean 'ResNet'"):
        backbones.lookup("ResNt")
    with pytest.raises(UnknownComponentError, match="acme-nets' provides backbones: ResNet"):
        backbones.lookup("acme-nets:VGG")
    with pytest.raises(UnknownComponentError, match="no installed distribution 'nowhere-dist'"):
        backbones.lookup("nowhere-dist:ResNet")


def test_dotted_import_path_only_with_the_opt_in_and_only_a_class_of_the_kind(selfsup_registries):
    from selfsup_core.import_paths import ImportPathRefused, allowing

    necks = selfsup_registries["necks"]
    with pytest.raises(ImportPathRefused, match="pass --allow-import-paths"):
        necks.get("torch.nn:Identity")
    with allowing():
        assert necks.get("torch.nn:Identity").__name__ == "Identity"
        assert necks.lookup("torch.nn:Identity").dist == registry.IMPORT_PATH
        with pytest.raises(ImportPathRefused, match="is not a torch.nn.Module subclass"):
            necks.get("collections:OrderedDict")
        with pytest.raises(ImportPathRefused, match="not a class"):
            necks.get("os:system")
        with pytest.raises(UnknownComponentError, match="cannot import it"):
            necks.get("collections:NoSuchThing")


def test_qualified_name_of_a_distribution_without_that_kind(selfsup_site):
    _net_dist(selfsup_site, "acmenets", "acmenets_mod_q")
    heads = selfsup_site.registries()["heads"]
    with pytest.raises(UnknownComponentError, match="distribution 'acmenets' provides no heads of that name"):
        heads.lookup("acmenets:Net")


def test_in_process_register_and_temporary(selfsup_registries):
    heads = selfsup_registries["heads"]

    @heads.register
    class MyHead:
        pass

    @heads.register("Alias")
    class Other:
        pass

    assert heads.get("MyHead") is MyHead and heads.get("Alias") is Other
    assert heads.lookup("MyHead").dist == registry.IN_PROCESS
    with pytest.raises(DuplicateComponentError, match="force=True"):
        heads.register("MyHead", Other)
    with heads.temporary("MyHead", Other):
        assert heads.get("MyHead") is Other
    assert heads.get("MyHead") is MyHead
    with heads.temporary("Fresh", Other):
        assert "Fresh" in heads
    assert "Fresh" not in heads
    heads.register("MyHead", Other, force=True)
    assert heads.get("MyHead") is Other
    heads.unregister("MyHead")
    assert "MyHead" not in heads
    heads.register("Lazy", "collections:Counter")  # a lazy string target
    assert heads.get("Lazy").__name__ == "Counter"


def test_register_refuses_to_shadow_an_installed_component_silently(selfsup_site):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_s")
    backbones = selfsup_site.registries()["backbones"]
    with pytest.raises(DuplicateComponentError, match="acme-nets 0.1.0"):
        backbones.register("Net", object)
    with backbones.temporary("Net", dict):
        assert backbones.get("Net") is dict
    assert backbones.get("Net").__module__ == "acme_nets_s"


def test_kinds_accept_singular_and_plural_and_reject_unknown():
    assert registry.canonical_kind("backbone") == "backbones"
    assert registry.canonical_kind("data-sources") == "data_sources"
    assert registry.canonical_kind("Memory") == "memories"
    with pytest.raises(SelfSupError, match="did you mean 'necks'"):
        registry.canonical_kind("nekcs")
    assert set(registry.KINDS.values()) == {
        "selfsup.algorithms", "selfsup.backbones", "selfsup.necks", "selfsup.heads", "selfsup.memories",
        "selfsup.datasets", "selfsup.data_sources", "selfsup.transforms", "selfsup.hooks", "selfsup.evaluators",
        "selfsup.runtimes", "selfsup.optimizers", "selfsup.lr_policies",
    }


def test_environment_switches(selfsup_site, monkeypatch):
    _net_dist(selfsup_site, "acme-nets", "acme_nets_e")
    _net_dist(selfsup_site, "other-nets", "other_nets_e", names=("Other",))
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGINS", "Acme_Nets, unrelated")
    assert selfsup_site.registries()["backbones"].names() == ["Other"]
    monkeypatch.setenv("SELFSUP_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert selfsup_site.registries()["backbones"].names() == []


def test_use_swaps_the_registries_in_use(selfsup_registries):
    from selfsup_core import session

    assert session.registries() is selfsup_registries
    other = registry.Registries(discover=False)
    with session.use(registries=other):
        assert session.get("backbones") is other["backbones"]
    assert session.registries() is selfsup_registries


def test_installed_metadata_wins_over_a_stale_egg_info_earlier_on_the_path(tmp_path):
    """A checkout's old ``.egg-info`` (first on sys.path when running from the checkout) must
    not hide entry points the installed ``.dist-info`` declares."""
    from selfsup_core.discovery import clear_scan_cache, scan_entry_points

    source, site = tmp_path / "checkout", tmp_path / "site"
    (source / "acme.egg-info").mkdir(parents=True)
    (source / "acme.egg-info" / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: acme\nVersion: 0.1.0\n")
    (source / "acme.egg-info" / "entry_points.txt").write_text("[selfsup.hooks]\nOld = acme:Old\n")
    (site / "acme-0.1.0.dist-info").mkdir(parents=True)
    (site / "acme-0.1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: acme\nVersion: 0.1.0\n")
    (site / "acme-0.1.0.dist-info" / "entry_points.txt").write_text(
        "[selfsup.hooks]\nOld = acme:Old\n\n[selfsup.runtimes]\nnew = acme:New\n")
    clear_scan_cache()
    found = scan_entry_points(path=[str(source), str(site)])
    assert [e.name for e in found["selfsup.runtimes"]] == ["new"]
    assert [e.name for e in found["selfsup.hooks"]] == ["Old"]  # one copy, not two
