"""LR policies are registered components (entry-point group ``selfsup.lr_policies``): the
core registers its built-ins like a plugin would, a plugin adds one by name, and
``selfsup-run list lr_policies`` shows them."""
from __future__ import annotations

import contextlib
import io

import pytest

from selfsup_core import registry, session
from selfsup_core.cli import main
from selfsup_core.engine import lr_policies
from selfsup_core.engine.schedules import build_lr_schedule
from selfsup_core.errors import ConfigError

BUILTIN = ["constant", "cosine", "CosineAnnealing", "Exp", "Fixed", "Poly", "Step", "StepFixCosineAnnealing"]

LINEAR = '''
from selfsup_core.api import LrPolicy


class Linear(LrPolicy):
    """From the base lr down to end_lr, linearly."""

    name = "Linear"
    keys = ("end_lr",)

    def read(self, table, common):
        return {"end_lr": table.number("end_lr", 0.0)}

    def regular_lr(self, schedule, progress, max_progress, base_lr):
        end = schedule.options["end_lr"]
        return base_lr + (end - base_lr) * progress / max_progress
'''


def _problems(cfg):
    with pytest.raises(ConfigError) as info:
        build_lr_schedule(cfg, None, iters_per_epoch=2, max_epochs=2)
    return [str(p) for p in info.value.problems]


def _listing(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["list", *args]) == 0
    return out.getvalue()


def test_the_core_registers_its_policies_as_entry_points():
    policies = session.registries()["lr_policies"]
    assert policies.names() == BUILTIN
    assert {policies.lookup(n).dist for n in BUILTIN} == {"selfsup-core"}
    assert policies.get("cosine") is policies.get("CosineAnnealing") is lr_policies.CosineAnnealing
    listing = _listing("lr_policies")
    assert listing.splitlines()[0] == "lr_policies (selfsup.lr_policies): 8"
    assert any(line.split() == ["StepFixCosineAnnealing", "selfsup-core", "0.1.0"] for line in listing.splitlines())


def test_the_migrator_vocabulary_comes_from_the_installed_policies():
    assert lr_policies.POLICIES == {"constant": "Fixed", "cosine": "CosineAnnealing",
                                    "cosineannealing": "CosineAnnealing", "exp": "Exp", "fixed": "Fixed",
                                    "poly": "Poly", "step": "Step", "stepfixcosineannealing": "StepFixCosineAnnealing"}
    assert lr_policies.POLICY_KEYS["Step"] == ("step", "gamma", "min_lr")
    assert lr_policies.POLICY_KEYS["Fixed"] == ()


def test_an_unknown_policy_is_one_line_with_a_did_you_mean_over_the_installed_ones():
    assert _problems({"policy": "Wobbly", "gamma": 0.5}) == [
        "lr_config.policy: unknown lr policy 'Wobbly'; did you mean 'Poly'?"]
    assert _problems({"policy": "xyz"}) == [
        "lr_config.policy: unknown lr policy 'xyz'; policies are " + ", ".join(BUILTIN)]


def test_a_plugin_policy_is_listed_validated_and_used(selfsup_site):
    selfsup_site.add("acme-lr", entry_points={"selfsup.lr_policies": {"Linear": "acme_lr:Linear"}},
                     modules={"acme_lr.py": LINEAR})
    with session.use(registries=selfsup_site.registries()):
        assert session.registries()["lr_policies"].names() == ["Linear"]  # this site's distributions only
        assert _listing("lr_policies").splitlines()[1].split() == ["Linear", "acme-lr", "0.1.0"]

        schedule = build_lr_schedule({"policy": "linear", "end_lr": 0.0, "by_epoch": False}, None,
                                     iters_per_epoch=2, max_epochs=2)
        assert schedule.policy == "Linear"
        assert [schedule.factor(i) for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
        warm = build_lr_schedule({"policy": "Linear", "by_epoch": False, "warmup": "constant", "warmup_iters": 1,
                                  "warmup_ratio": 0.5}, None, iters_per_epoch=2, max_epochs=2)
        assert [warm.factor(i) for i in range(4)] == [0.5, 0.75, 0.5, 0.25]  # the common warmup applies
        assert warm.state_dict()["settings"]["policy"] == "Linear"

        assert _problems({"policy": "Linear", "end_lrr": 0.1, "end_lr": "low"}) == [
            "lr_config.end_lrr: unknown key of lr policy Linear; did you mean 'end_lr'?",
            "lr_config.end_lr: must be a number, got string 'low'"]
        assert _problems({"policy": "Linaer"})[0].startswith("lr_config.policy: unknown lr policy 'Linaer'; "
                                                             "did you mean 'Linear'?")
        # the core's own policies stay usable when discovery sees only this site
        assert build_lr_schedule({"policy": "cosine"}, None, iters_per_epoch=1, max_epochs=2).factor(1) == 0.5


def test_an_in_process_policy_shadows_by_name(selfsup_registries):
    class Half(lr_policies.LrPolicy):
        def regular_lr(self, schedule, progress, max_progress, base_lr):
            return base_lr / 2

    with selfsup_registries["lr_policies"].temporary("Half", Half):
        schedule = build_lr_schedule({"policy": "half"}, None, iters_per_epoch=1, max_epochs=1)
        assert (schedule.policy, schedule.factor(0)) == ("Half", 0.5)


def test_an_import_path_policy_must_be_a_policy_class():
    """``policy = "module:Class"`` (allowed in these tests, as with ``--allow-import-paths``)
    takes only a class with ``regular_lr``."""
    cfg = {"policy": "selfsup_core.engine.lr_policies:Poly", "power": 2.0}
    assert build_lr_schedule(cfg, None, iters_per_epoch=1, max_epochs=2).factor(1) == 0.25
    (line,) = _problems({"policy": "selfsup_core.engine.lr_policies:PolicyTable"})
    assert line.startswith("lr_config.policy: 'selfsup_core.engine.lr_policies:PolicyTable' is the class ")
    assert line.endswith("which is not an lr policy class (with a regular_lr method, e.g. a "
                         "selfsup_core.api.LrPolicy), as lr_policies must be")


def test_the_registries_given_are_the_ones_searched(selfsup_registries):
    """The trainer passes its own registries: a policy registered there is found, whatever
    registries are in use."""
    class Quarter(lr_policies.LrPolicy):
        def regular_lr(self, schedule, progress, max_progress, base_lr):
            return base_lr / 4

    own = registry.Registries(discover=False)
    own["lr_policies"].register("Quarter", Quarter)
    assert build_lr_schedule({"policy": "Quarter"}, None, iters_per_epoch=1, max_epochs=1,
                             registries=own).factor(0) == 0.25
    assert _problems({"policy": "Quarter"})[0].startswith("lr_config.policy: unknown lr policy 'Quarter'")
