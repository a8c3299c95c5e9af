"""Tests of selfsup-example-plugin. Run after installing the plugin:

    pip install --no-deps --no-build-isolation -e examples/third_party_plugin
    python -m pytest examples/third_party_plugin/tests -q

The tests that go through the core's discovery (``build``, ``selfsup-run``) use the installed
entry points, as a user's config would.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import selfsup_core.build
from selfsup_core import cli, registry, session
from selfsup_core.errors import ConfigError
from selfsup_example_plugin import TinyConvNet, VICReg, vicreg_loss

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "vicreg_tinyconvnet_1xb256-coslr-100e_fashion-mnist.toml"
LOSS_KEYS = {"loss_invariance", "loss_variance", "loss_covariance"}


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch):
    """Registries discovering the installed plugins afresh, in use for the test (whatever an
    earlier test left in ``selfsup_core.session.current()`` does not matter)."""
    for name in ("SELFSUP_DISABLE_PLUGIN_AUTOLOAD", "SELFSUP_DISABLE_PLUGINS"):
        monkeypatch.delenv(name, raising=False)
    with session.use(session.Session()) as current:
        yield current.registries


def small_vicreg(**kwargs) -> VICReg:
    return VICReg(TinyConvNet(in_channels=1, widths=[4, 8]), projector_dims=[16, 16, 8], **kwargs)


# -- (1) vicreg_loss against a hand computation ------------------------------------------------
# N = 3 samples, D = 2 dims.
Z_A = [[0.0, 0.0], [0.5, 1.0], [1.0, 0.5]]
Z_B = [[1.0, 0.0], [0.0, 2.0], [2.0, 1.0]]
# invariance: z_a - z_b = [[-1, 0], [0.5, -1], [-1, -0.5]]; squares 1 + 0 + 0.25 + 1 + 1 + 0.25 = 3.5
#   mean over the 6 elements = 3.5 / 6
# variance, branch a: dim 0 = [0, .5, 1], deviations [-.5, 0, .5], var = 0.5 / 2 = 0.25, std 0.5;
#   dim 1 = [0, 1, .5], same var 0.25, std 0.5 -> mean(relu(1 - 0.5), relu(1 - 0.5)) = 0.5
# variance, branch b: dim 0 = [1, 0, 2], deviations [0, -1, 1], var = 2 / 2 = 1, std 1;
#   dim 1 = [0, 2, 1], deviations [-1, 1, 0], var 1, std 1 -> 0
#   averaged over the branches: (0.5 + 0) / 2 = 0.25
# covariance, branch a: cov01 = (-.5 * -.5 + 0 * .5 + .5 * 0) / 2 = 0.125;
#   off-diagonal squares 2 * 0.125**2 = 0.03125, / D = 0.015625
# covariance, branch b: cov01 = (0 * -1 + -1 * 1 + 1 * 0) / 2 = -0.5; 2 * 0.25 = 0.5, / D = 0.25
#   summed over the branches: 0.015625 + 0.25 = 0.265625
HAND_INVARIANCE = 3.5 / 6
HAND_VARIANCE = 0.25
HAND_COVARIANCE = 0.265625


def plain_python_vicreg(a: list[list[float]], b: list[list[float]], eps: float) -> tuple[float, float, float]:
    """The three unweighted terms with loops and the math module only (no torch)."""
    n, d = len(a), len(a[0])
    invariance = sum((a[i][j] - b[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def column(z: list[list[float]], j: int) -> list[float]:
        return [row[j] for row in z]

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def variance_term(z: list[list[float]]) -> float:
        hinge = []
        for j in range(d):
            col = column(z, j)
            var = sum((x - mean(col)) ** 2 for x in col) / (n - 1)
            hinge.append(max(0.0, 1 - math.sqrt(var + eps)))
        return mean(hinge)

    def covariance_term(z: list[list[float]]) -> float:
        total = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    cj, ck = column(z, j), column(z, k)
                    cov = sum((cj[i] - mean(cj)) * (ck[i] - mean(ck)) for i in range(n)) / (n - 1)
                    total += cov**2
        return total / d

    return (
        invariance,
        (variance_term(a) + variance_term(b)) / 2,
        covariance_term(a) + covariance_term(b),
    )


def as_floats(losses: dict[str, torch.Tensor]) -> tuple[float, float, float]:
    assert set(losses) == LOSS_KEYS
    return losses["loss_invariance"].item(), losses["loss_variance"].item(), losses["loss_covariance"].item()


def test_vicreg_loss_matches_hand_computation() -> None:
    z_a, z_b = torch.tensor(Z_A, dtype=torch.float64), torch.tensor(Z_B, dtype=torch.float64)
    got = as_floats(vicreg_loss(z_a, z_b, sim_coeff=1.0, std_coeff=1.0, cov_coeff=1.0, eps=0.0))
    assert got == pytest.approx((HAND_INVARIANCE, HAND_VARIANCE, HAND_COVARIANCE), rel=1e-12)
    # the plain-Python reference agrees with the numbers worked out above
    assert plain_python_vicreg(Z_A, Z_B, eps=0.0) == pytest.approx((HAND_INVARIANCE, HAND_VARIANCE, HAND_COVARIANCE))


def test_vicreg_loss_weights_each_term_by_its_coefficient() -> None:
    z_a, z_b = torch.tensor(Z_A, dtype=torch.float64), torch.tensor(Z_B, dtype=torch.float64)
    got = as_floats(vicreg_loss(z_a, z_b, sim_coeff=2.0, std_coeff=3.0, cov_coeff=5.0, eps=0.0))
    assert got == pytest.approx((2.0 * HAND_INVARIANCE, 3.0 * HAND_VARIANCE, 5.0 * HAND_COVARIANCE), rel=1e-12)


def test_vicreg_loss_default_coefficients_and_eps_match_plain_python() -> None:
    invariance, variance, covariance = plain_python_vicreg(Z_A, Z_B, eps=1e-4)
    got = as_floats(vicreg_loss(torch.tensor(Z_A), torch.tensor(Z_B)))  # float32, 25 / 25 / 1, eps 1e-4
    assert got == pytest.approx((25.0 * invariance, 25.0 * variance, 1.0 * covariance), rel=1e-5)


# -- (2) each term's edge cases ---------------------------------------------------------------
def test_identical_branches_have_zero_invariance() -> None:
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    assert vicreg_loss(z, z.clone())["loss_invariance"].item() == 0.0


def test_std_at_least_one_in_every_dim_gives_zero_variance() -> None:
    # every column's unbiased std is at least 1 (asserted below), so sqrt(var + eps) > 1
    z_a = torch.tensor([[-2.0, 3.0, 10.0], [0.0, 0.0, 0.0], [2.0, -3.0, 5.0]])
    z_b = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 2.0], [3.0, 0.0, -2.0]])
    assert (z_a.std(dim=0) >= 1).all() and (z_b.std(dim=0) >= 1).all()
    assert vicreg_loss(z_a, z_b)["loss_variance"].item() == 0.0


def test_collapsed_branch_has_full_variance_penalty() -> None:
    collapsed = torch.ones(4, 3)
    spread = torch.tensor([[-2.0, 2.0, 0.0], [2.0, -2.0, 2.0], [0.0, 0.0, -2.0], [1.0, 1.0, 1.0]])
    losses = vicreg_loss(collapsed, spread, std_coeff=1.0, eps=1e-4)
    # std of a constant column is sqrt(eps) = 0.01: (1 - 0.01) for branch a, 0 for branch b, averaged
    assert losses["loss_variance"].item() == pytest.approx((1 - 0.01) / 2, rel=1e-6)


def test_decorrelated_dims_give_zero_covariance() -> None:
    # centred columns [1, 1, -1, -1] and [1, -1, 1, -1] are orthogonal: covariance 0
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert vicreg_loss(z, z * 3 + 7)["loss_covariance"].item() == 0.0


def test_vicreg_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        vicreg_loss(torch.ones(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match="shape"):
        vicreg_loss(torch.ones(3, 4), torch.ones(3, 5))


# -- (3) TinyConvNet ---------------------------------------------------------------------------
def test_tinyconvnet_output_shape() -> None:
    net = TinyConvNet()
    assert net.out_channels == 128
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 128)
    rgb = TinyConvNet(in_channels=3, widths=[8, 16])
    assert rgb(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_tinyconvnet_group_norm() -> None:
    net = TinyConvNet(widths=[8, 16, 32], norm_cfg={"type": "GN", "num_groups": 4})
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == 4 for m in norms)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 32)


@pytest.mark.parametrize(
    ("norm_cfg", "message"),
    [
        ({"type": "LN"}, "unsupported norm_cfg type 'LN'"),
        ({"type": "GN"}, "needs num_groups"),
        ({"type": "GN", "num_groups": 5}, "does not divide"),
        ({"type": "BN", "momentun": 0.1}, "unknown norm_cfg key"),
    ],
)
def test_tinyconvnet_bad_norm_cfg(norm_cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TinyConvNet(widths=[8, 16], norm_cfg=norm_cfg)


def test_tinyconvnet_init_cfg() -> None:
    net = TinyConvNet(widths=[8, 16], init_cfg={"type": "Kaiming"})
    conv = net.layers[1][0]
    expected_std = math.sqrt(2.0 / (16 * 3 * 3))  # kaiming normal, fan_out, ReLU gain
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.2)
    with pytest.raises(ValueError, match="not supported"):
        TinyConvNet(init_cfg={"type": "Pretrained", "checkpoint": "x.pth"})


# -- (4) VICReg --------------------------------------------------------------------------------
def test_forward_train_returns_finite_losses_and_trains_the_backbone() -> None:
    torch.manual_seed(0)
    model = small_vicreg()
    views = [torch.randn(4, 1, 28, 28), torch.randn(4, 1, 28, 28)]
    losses = model(views, mode="train")
    assert set(losses) == LOSS_KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_extract_and_modes() -> None:
    model = small_vicreg().eval()
    img = torch.randn(3, 1, 28, 28)
    assert model(img, mode="extract").shape == (3, 8)
    assert torch.equal(model.extract_feat(img), model.backbone(img))
    with pytest.raises(ValueError, match="unknown mode"):
        model(img, mode="test")
    with pytest.raises(ValueError, match="2 views"):
        model.forward_train([img])


def test_projector_layout() -> None:
    model = small_vicreg()
    kinds = [type(m) for m in model.projector]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert model.projector[0].in_features == model.backbone.out_channels == 8


# -- (5) through the core's registries (installed entry points) ----------------------------------
def test_core_builds_vicreg_with_tinyconvnet(installed) -> None:
    model = selfsup_core.build.build({"type": "VICReg", "backbone": {"type": "TinyConvNet"}}, "algorithms")
    assert isinstance(model, VICReg)
    assert isinstance(model.backbone, TinyConvNet)
    assert model.projector[0].in_features == 128


def test_core_reports_config_mistakes(installed) -> None:
    table = {"type": "VICReg", "projector_dim": [64], "sim_coeff": "high", "backbone": {"type": "TinyConvNet"}}
    with pytest.raises(ConfigError) as info:
        selfsup_core.build.build(table, "algorithms", path="model")
    text = str(info.value)
    assert "model.projector_dim: unknown argument of VICReg (selfsup-example-plugin 0.1.0); did you mean 'projector_dims'?" in text
    assert "model.sim_coeff: VICReg (selfsup-example-plugin 0.1.0) expects float, got string 'high'" in text
    # a ValueError raised by the constructor comes back as a config error naming the key
    bad_norm = {"type": "VICReg", "backbone": {"type": "TinyConvNet", "norm_cfg": {"type": "LN"}}}
    with pytest.raises(ConfigError, match=r"model\.backbone: TinyConvNet .* could not be built: ValueError"):
        selfsup_core.build.build(bad_norm, "algorithms", path="model")


# -- the fixtures of selfsup_core.testing -------------------------------------------------------
def test_in_process_registration(selfsup_registries) -> None:
    """``selfsup_registries``: empty registries, no discovery: register the classes by hand."""
    assert "VICReg" not in selfsup_registries["algorithms"]
    selfsup_registries["algorithms"].register("VICReg", VICReg)
    selfsup_registries["backbones"].register("TinyConvNet", TinyConvNet)
    model = selfsup_core.build.build(
        {"type": "VICReg", "projector_dims": [16, 8], "backbone": {"type": "TinyConvNet", "widths": [4, 8]}},
        "algorithms",
    )
    assert isinstance(model.backbone, TinyConvNet) and model.projector[-1].out_features == 8


def test_name_clash_needs_a_qualified_type(selfsup_site) -> None:
    """``selfsup_site``: a second installed distribution providing a backbone 'TinyConvNet'."""
    selfsup_site.add(
        "other-nets",
        "2.0",
        entry_points={"selfsup.backbones": {"TinyConvNet": "other_nets:TinyConvNet"}},
        modules={"other_nets.py": "class TinyConvNet:\n    out_channels = 1\n"},
    )
    registries = registry.Registries()  # discovers sys.path: this plugin and the fake site
    table = {"type": "VICReg", "projector_dims": [8], "backbone": {"type": "TinyConvNet", "widths": [4]}}
    with pytest.raises(ConfigError) as info:
        selfsup_core.build.build(table, "algorithms", registries=registries)
    message = str(info.value)
    assert "selfsup-example-plugin 0.1.0" in message and "other-nets 2.0" in message
    table["backbone"]["type"] = "selfsup-example-plugin:TinyConvNet"
    model = selfsup_core.build.build(table, "algorithms", registries=registries)
    assert isinstance(model.backbone, TinyConvNet)


def test_bulk_registration_hook(selfsup_site) -> None:
    """``selfsup_site`` again: a distribution that installs ``variants`` as a selfsup plugin."""
    selfsup_site.add(
        "variants-demo",
        "0.2.0",
        entry_points={"selfsup.plugins": {"tinyconvnet-variants": "selfsup_example_plugin.variants"}},
    )
    registries = selfsup_site.registries()  # discovers the fake site only
    backbones = registries["backbones"]
    assert backbones.list("TinyConvNet*") == ["TinyConvNetL", "TinyConvNetM", "TinyConvNetS"]
    assert backbones.lookup("TinyConvNetS").provider == "variants-demo 0.2.0"
    net = selfsup_core.build.build({"type": "TinyConvNetS", "in_channels": 3}, "backbones", registries=registries)
    assert isinstance(net, TinyConvNet) and net.widths == [16, 32, 64] and net.in_channels == 3
    with pytest.raises(ConfigError, match="unknown argument of TinyConvNetS .*; it takes in_channels"):
        selfsup_core.build.build({"type": "TinyConvNetS", "widths": [8]}, "backbones", registries=registries)


def test_config_check_calls_process_config_hook(installed, selfsup_plugin_manager, selfsup_hook_recorder) -> None:
    """``selfsup_hook_recorder``: the hooks the CLI calls while checking the config (the
    command line is parsed first, with the commands plugins add). The config's ``[evaluation]``
    section is selfsup-eval's, so its plugin joins the otherwise empty test manager."""
    import selfsup_eval.plugin

    selfsup_plugin_manager.register(selfsup_eval.plugin, name="eval")
    assert cli.main([str(CONFIG), "--check"]) == 0
    assert selfsup_hook_recorder.names() == ["selfsup_register_commands", "selfsup_process_config"]
    assert selfsup_hook_recorder.calls[1].kwargs["config"].data["model"]["backbone"]["type"] == "TinyConvNet"


# -- (6) the selfsup-run command line -----------------------------------------------------------
def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}  # plugins on
    return subprocess.run(
        [sys.executable, "-m", "selfsup_core.cli", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
    )


def test_cli_lists_the_plugin_components(tmp_path: Path) -> None:
    result = _run_cli("list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kinds = json.loads(result.stdout)["kinds"]
    rows = {(kind, row["name"]): row for kind, table in kinds.items() for row in table}
    for key, target in [
        (("algorithms", "VICReg"), "selfsup_example_plugin.vicreg:VICReg"),
        (("backbones", "TinyConvNet"), "selfsup_example_plugin.tiny_convnet:TinyConvNet"),
    ]:
        row = rows[key]
        assert (row["dist"], row["version"], row["target"]) == ("selfsup-example-plugin", "0.1.0", target)
        assert row["error"] is None and not row["duplicate"]


def test_selfsup_run_check_prints_ok(installed, capsys) -> None:
    # In-process through selfsup_core.cli.main, the function behind the selfsup-run script: a
    # subprocess would spend over 2 s importing torch, which the check needs to build the model.
    assert cli.main([str(CONFIG), "--check"]) == 0
    out = capsys.readouterr().out
    assert "OK, model VICReg with 686,304 parameters (686,304 trainable)" in out


def test_selfsup_run_check_reports_a_typo_with_file_and_key(installed, capsys) -> None:
    assert cli.main([str(CONFIG), "--check", "--cfg-options", "model.backbone.widht=[8]"]) == 2
    err = capsys.readouterr().err
    assert "model.backbone.widht: unknown argument of TinyConvNet (selfsup-example-plugin 0.1.0); did you mean 'widths'?" in err
