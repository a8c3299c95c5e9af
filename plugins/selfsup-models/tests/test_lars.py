"""LARS (registered by selfsup-models under selfsup.optimizers) against hand computations."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from selfsup_core.api import LARS, build_optimizer


def test_lars_is_the_registered_optimizer():
    from selfsup_core.api import session

    component = session.registries()["optimizers"].lookup("LARS")
    assert (component.dist, component.load()) == ("selfsup-models", LARS)


def _vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _lars_reference(w, g, buf, lr, wd, eta, momentum, exclude, eps=1e-8):
    """One LARS step in plain Python floats; returns (new w, new buf)."""
    w_norm, g_norm = _norm(w), _norm(g)
    trust = 1.0
    if not exclude and w_norm > 0 and g_norm > 0:
        trust = eta * w_norm / (g_norm + wd * w_norm + eps)
    v = [(gi + wd * wi) * lr * trust for gi, wi in zip(g, w)]
    buf = v if buf is None else [momentum * b + vi for b, vi in zip(buf, v)]
    return [wi - bi for wi, bi in zip(w, buf)], buf


@pytest.mark.parametrize("foreach", [True, False])
def test_lars_two_steps_match_hand_computation(foreach):
    a = nn.Parameter(_vec(3.0, 4.0))  # ||a|| = 5
    z = nn.Parameter(_vec(0.0, 0.0))  # zero weight: trust ratio 1
    b = nn.Parameter(_vec(1.0, -2.0))  # excluded: SGD with weight decay
    opt = LARS([{"params": [a, z]}, {"params": [b], "lars_exclude": True}],
               lr=0.2, momentum=0.9, weight_decay=0.1, eta=0.5, foreach=foreach)
    grads = {"a": [0.6, 0.8], "z": [1.0, 2.0], "b": [0.5, 0.5]}

    # step 1, worked by hand: trust(a) = 0.5 * 5 / (1 + 0.1 * 5) = 5/3,
    # v(a) = ([0.6, 0.8] + 0.1 * [3, 4]) * 0.2 * 5/3 = [0.3, 0.4]
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        p.grad = _vec(*grads[name])
    opt.step()
    assert a.tolist() == pytest.approx([2.7, 3.6], abs=1e-8)
    assert z.tolist() == pytest.approx([-0.2, -0.4], abs=1e-12)  # v = g * lr
    assert b.tolist() == pytest.approx([1 - 0.12, -2 - 0.06], abs=1e-12)  # (g + wd w) * lr

    # step 2 with a new lr: the lr is inside the momentum buffer (MMSelfSup/SimCLR LARS)
    ref = {"a": ([3.0, 4.0], None), "z": ([0.0, 0.0], None), "b": ([1.0, -2.0], None)}
    for lr in (0.2, 0.1):
        for name in ref:
            w, buf = ref[name]
            ref[name] = _lars_reference(w, grads[name], buf, lr, 0.1, 0.5, 0.9, exclude=name == "b")
    for group in opt.param_groups:
        group["lr"] = 0.1
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        p.grad = _vec(*grads[name])
    opt.step()
    for p, name in ((a, "a"), (z, "z"), (b, "b")):
        assert p.tolist() == pytest.approx(ref[name][0], abs=1e-12), name
        assert opt.state[p]["momentum_buffer"].tolist() == pytest.approx(ref[name][1], abs=1e-12), name
    # trust(a) at step 2 = 0.5 * 4.5 / (1 + 0.45)
    expected_v = [(g + 0.1 * w) * 0.1 * (2.25 / 1.45) for g, w in zip(grads["a"], [2.7, 3.6])]
    assert ref["a"][1] == pytest.approx([0.9 * 0.3 + expected_v[0], 0.9 * 0.4 + expected_v[1]], abs=1e-8)


def test_lars_excluded_group_equals_sgd_at_constant_lr():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    p1, p2 = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    lars = LARS([p1], lr=0.05, momentum=0.9, weight_decay=1e-3)
    lars.param_groups[0]["lars_exclude"] = True
    sgd = torch.optim.SGD([p2], lr=0.05, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        grad = torch.randn(5, 3)
        p1.grad, p2.grad = grad.clone(), grad.clone()
        lars.step()
        sgd.step()
    torch.testing.assert_close(p1, p2)


def test_lars_nesterov_and_zero_grad_and_no_grad():
    w = nn.Parameter(_vec(3.0, 4.0))
    idle = nn.Parameter(_vec(1.0, 1.0))  # no gradient: untouched
    opt = LARS([w, idle], lr=1.0, momentum=0.5, eta=1.0, nesterov=True, eps=0.0)
    w.grad = _vec(0.0, 0.0)  # zero gradient: trust 1, v = 0
    opt.step()
    assert w.tolist() == [3.0, 4.0] and idle.tolist() == [1.0, 1.0]
    w.grad = _vec(0.3, 0.4)  # trust = 5 / 0.5 = 10, v = [3, 4], buf = 0.5 * 0 + v
    opt.step()
    assert w.tolist() == pytest.approx([3 - (3 + 0.5 * 3), 4 - (4 + 0.5 * 4)])


def test_lars_state_dict_round_trip_is_exact():
    torch.manual_seed(1)
    model_a = nn.Linear(4, 3)
    model_b = nn.Linear(4, 3)
    model_b.load_state_dict(model_a.state_dict())
    cfg = {"type": "LARS", "lr": 0.3, "weight_decay": 1e-4, "exclude_bias_and_norm": True}
    opt_a = build_optimizer(model_a, cfg)
    x = torch.randn(8, 4)
    for _ in range(2):
        opt_a.zero_grad()
        model_a(x).pow(2).sum().backward()
        opt_a.step()
    model_b.load_state_dict(model_a.state_dict())
    opt_b = build_optimizer(model_b, cfg)
    buffer = io.BytesIO()  # through a file, as a checkpoint does (a live state dict shares tensors)
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    assert opt_b.param_groups[1]["lars_exclude"] is True
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(pa, pb)


def test_lars_rejects_bad_values():
    with pytest.raises(ValueError, match="LARS: lr"):
        LARS([nn.Parameter(torch.ones(1))], lr=-0.1)
    with pytest.raises(ValueError, match="nesterov"):
        LARS([nn.Parameter(torch.ones(1))], lr=0.1, momentum=0.0, nesterov=True)
