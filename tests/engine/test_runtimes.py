"""Distributed runtimes are registered components: ``[runner] distributed`` names one."""
from __future__ import annotations

import pytest
import torch

from selfsup_core import registry, session
from selfsup_core.config import load_config
from selfsup_core.engine.runtimes import DDPRuntime
from selfsup_core.engine.settings import read_settings
from selfsup_core.errors import ConfigError


def test_ddp_is_the_registered_default_runtime():
    runtimes = session.registries()["runtimes"]
    assert "ddp" in runtimes.names()
    assert runtimes.lookup("ddp").load() is DDPRuntime
    assert runtimes.lookup("ddp").dist == "selfsup-core"


def test_the_runtime_is_read_from_the_runner_table_and_checked(write_config):
    assert read_settings(load_config(write_config())).distributed == "ddp"
    bad = load_config(write_config(), ['runner.distributed="fsdb"'])
    with pytest.raises(ConfigError, match=r"runner\.distributed: unknown distributed runtime 'fsdb'.*installed: ddp"):
        read_settings(bad)


def test_a_plugin_runtime_is_listed_and_accepted(selfsup_site, write_config):
    selfsup_site.add("acme-fsdp", entry_points={"selfsup.runtimes": {"fsdp2": "acme_fsdp:FSDP2Runtime"}},
                     modules={"acme_fsdp.py": "class FSDP2Runtime:\n    def __init__(self, model, *, device, settings):\n"
                                              "        self.module = model\n"})
    with session.use(registries=selfsup_site.registries()):
        assert session.registries()["runtimes"].names() == ["fsdp2"]  # this site's distributions only
        assert read_settings(load_config(write_config(), ['runner.distributed="fsdp2"'])).distributed == "fsdp2"


def test_trainer_kinds_are_not_config_components(write_config):
    """``[optimizer] type = "LARS"`` names a registered optimizer, yet the table is the
    trainer's (built with the model's parameters), not a component to validate on its own."""
    from selfsup_core.build import validate

    config = load_config(write_config(), ['optimizer.type="LARS"'])
    validate(config)  # no "missing required argument 'params'"
    assert session.registries()["optimizers"].lookup("LARS").dist == "selfsup-models"


# -- the runtime contract (engine/runtimes.py), implemented by a plugin from a test site -------
FAKE_RUNTIME = '''
from pathlib import Path

import torch

from selfsup_core.api import ConfigError

CALLS = []


class FakeRuntime:
    """Keeps the model as it is and stores its weights beside the checkpoint, not in it."""

    def check(self, config, settings, model):
        CALLS.append(("check", model.__name__ if isinstance(model, type) else type(model).__name__))
        if getattr(model, "refuse_fake", False):
            raise ConfigError(config.problem(("runner", "distributed"), "'fake' cannot run this; use 'ddp'"))

    def __call__(self, model, *, device, settings):
        CALLS.append(("call", str(device)))
        return model

    def after_wrap(self, model, optimizer, names):
        CALLS.append(("after_wrap", sorted(names.values())))

    def save_state(self, runner, state):
        name = f"fake_{runner.iter}.pt"
        torch.save(state["state_dict"], Path(runner.work_dir) / name)
        CALLS.append(("save_state", runner.iter))
        return {**state, "state_dict": {}, "meta": {**state["meta"], "fake": name,
                                                    "runtime_state": f"fake weights ({name})"}}

    def after_save(self, work_dir):
        CALLS.append(("after_save", sorted(p.name for p in work_dir.glob("fake_*.pt"))))

    def load_state(self, runner, state, path):
        CALLS.append(("load_state", state["meta"]["fake"]))
        return {**state, "state_dict": torch.load(Path(path).parent / state["meta"]["fake"], weights_only=True)}


FAKE = FakeRuntime()
'''


@pytest.fixture
def fake_runtime(selfsup_site, tmp_path, monkeypatch):
    """The ``fake`` runtime installed from a test site, in a session that sees it and every
    installed distribution, with a one-process gloo group that counts as distributed."""
    import torch.distributed as torch_dist

    from selfsup_core.engine import dist

    selfsup_site.add("acme-fake-runtime", entry_points={"selfsup.runtimes": {"fake": "acme_fake:FAKE"}},
                     modules={"acme_fake.py": FAKE_RUNTIME})
    torch_dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    try:
        with session.use(session.Session()):
            import acme_fake

            yield acme_fake
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:the lr schedule of the checkpoint differs")  # resumed with max_epochs = 2
def test_a_plugin_runtime_implements_the_contract(fake_runtime, write_config, tmp_path):
    """The trainer calls check, the runtime, after_wrap, save_state and after_save on its own,
    load_state on resume, and refuses the runtime's checkpoint in a run without it."""
    from selfsup_core.engine.checkpoint import CheckpointError
    from selfsup_core.engine.runtimes import check_before_rendezvous
    from selfsup_core.engine.trainer import Trainer
    from selfsup_core.engine.weights_io import WeightsError, read_state_dict

    path = write_config()
    options = ['runner.distributed="fake"', "data.train.length=16", "runner.max_epochs=1"]
    config = load_config(path, options)
    check_before_rendezvous(config, read_settings(config), session.registries())
    Trainer(config, work_dir=tmp_path / "w").run()
    calls = fake_runtime.CALLS
    names = ["net.0.bias", "net.0.weight", "net.3.bias", "net.3.weight"]
    assert calls == [("check", "ToyAlgorithm"), ("check", "ToyAlgorithm"), ("call", "cpu"), ("after_wrap", names),
                     ("save_state", 2), ("after_save", ["fake_2.pt"])]
    state = torch.load(tmp_path / "w" / "latest.pth", weights_only=True)
    assert state["state_dict"] == {} and state["meta"]["runtime"] == "fake"
    assert state["meta"]["runtime_state"] == "fake weights (fake_2.pt)"

    with pytest.raises(CheckpointError) as info:  # a run with another runtime (ddp)
        Trainer(load_config(path, options[1:]), work_dir=tmp_path / "w", resume="auto").run()
    assert str(info.value) == (f"checkpoint {tmp_path / 'w' / 'latest.pth'} holds fake weights (fake_2.pt); "
                               "resume it with [runner] distributed = 'fake' on several processes")
    with pytest.raises(WeightsError, match=r"latest\.pth: holds fake weights \(fake_2\.pt\), not weights; resume it "
                                           r"with \[runner\] distributed = 'fake'$"):
        read_state_dict(tmp_path / "w" / "latest.pth")

    # resumed through load_state: the file's state_dict is empty, so the model (loaded strictly)
    # got the weights load_state returned
    calls.clear()
    two_epochs = options[:2] + ["runner.max_epochs=2"]
    assert Trainer(load_config(path, two_epochs), work_dir=tmp_path / "w", resume="auto").run()["iter"] == 4
    assert calls == [("check", "ToyAlgorithm"), ("call", "cpu"), ("after_wrap", names), ("load_state", "fake_2.pt"),
                     ("save_state", 4), ("after_save", ["fake_2.pt", "fake_4.pt"])]


def test_a_runtime_check_refuses_an_algorithm_before_the_rendezvous(fake_runtime, write_config):
    from selfsup_core.engine.runtimes import check_before_rendezvous

    config = load_config(write_config(), ['runner.distributed="fake"'])
    import selfsup_toy

    selfsup_toy.ToyAlgorithm.refuse_fake = True
    try:
        with pytest.raises(ConfigError, match=r"^--cfg-options: runner\.distributed: 'fake' cannot run this; use 'ddp'$"):
            check_before_rendezvous(config, read_settings(config), session.registries())
    finally:
        del selfsup_toy.ToyAlgorithm.refuse_fake
