"""DenseCL: losses against a hand computation, dense matching, queue state (exact values,
wrap-around, checkpoint round trip), the momentum encoder (no gradient, EMA rule), the
loss_lambda warm-up hook, config errors, and one epoch through ``selfsup-run``."""
from __future__ import annotations

import io
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup_contrastive.densecl import DenseCL, DenseCLHook, dense_positive_logits
from selfsup_core.errors import SelfSupError
from selfsup_core.testing import assert_validated_from_config, derive_config, read_metrics, run_selfsup
from selfsup_models.heads.contrastive import ContrastiveHead
from selfsup_models.necks import DenseCLNeck

CONFIGS = Path(__file__).resolve().parents[3] / "examples" / "configs"
FASHION = CONFIGS / "densecl_resnet18_1xb256-coslr-200e_fashion-mnist.toml"


class MapBackbone(nn.Module):
    """A 'backbone' whose only feature map is the image itself (one unused weight, so the
    momentum update has a parameter to blend)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


class MeanNeck(nn.Module):
    """A DenseCLNeck stand-in: global = mean over locations, dense = the map (``(N, C, S)``),
    pooled dense = mean over locations."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x: tuple[torch.Tensor]) -> list[torch.Tensor]:
        dense = x[0].flatten(2)
        return [dense.mean(2), dense, dense.mean(2)]


def stub_densecl(queue: list[list[float]], loss_lambda: float = 0.5, temperature: float = 0.2,
                 dtype: torch.dtype = torch.float32) -> DenseCL:
    """DenseCL on the stand-ins, both queues set to ``queue`` (``(D, K)`` as nested rows)."""
    model = DenseCL(MapBackbone(), MeanNeck(), ContrastiveHead(temperature=temperature),
                    queue_len=len(queue[0]), feat_dim=len(queue), momentum=0.9, loss_lambda=loss_lambda).to(dtype)
    model.queue.copy_(torch.tensor(queue, dtype=dtype))
    model.queue2.copy_(torch.tensor(queue, dtype=dtype))
    return model


def image(*locations: tuple[float, float]) -> torch.Tensor:
    """A ``(1, 2, 1, S)`` image whose location ``s`` has the two channel values ``locations[s]``."""
    return torch.tensor(locations).t().reshape(1, 2, 1, len(locations))


# -- dense matching by hand ---------------------------------------------------------------------
# One sample, C = D = 2, S = 2. Backbone: query locations s0 = (1, 0), s1 = (0, 1); key locations
# j0 = (0.6, 0.8), j1 = (0.8, -0.6). Similarities: s0.j0 = 0.6, s0.j1 = 0.8 -> s0 matches j1;
# s1.j0 = 0.8, s1.j1 = -0.6 -> s1 matches j0.
# Projections: q_grid s0 = (1, 0), s1 = (0, 1); k_grid j0 = (0.6, 0.8), j1 = (-0.8, 0.6) (not the
# backbone's, so the match must come from the backbone features):
#   s0 . k_grid[j1] = -0.8,  s1 . k_grid[j0] = 0.8
def test_dense_positive_logits_by_hand() -> None:
    q_b = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])       # (N, C, S): columns are locations
    k_b = torch.tensor([[[0.6, 0.8], [0.8, -0.6]]])
    q_grid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k_grid = torch.tensor([[[0.6, -0.8], [0.8, 0.6]]])
    assert dense_positive_logits(q_b, k_b, q_grid, k_grid).tolist() == pytest.approx([-0.8, 0.8])


# -- the whole loss by hand -------------------------------------------------------------------
# The stand-ins make the backbone map the image and the projections plain means, so:
#   query image s0 = (1, 0), s1 = (0, 1):  q = normalize(0.5, 0.5) = (r, r), r = 1/sqrt(2);
#     q_grid = q_b = the locations
#   key image j0 = (0.6, 0.8), j1 = (0.8, -0.6): k = k2 = normalize(0.7, 0.1) = (7, 1)/sqrt(50)
#   both queues: columns (1, 0) and (0, 1); T = 0.2
# global: l_pos = q.k = 8 / (sqrt(2) sqrt(50)) = 0.8; l_neg = (r, r)
#   loss_single = -log(e^(0.8/T) / (e^(0.8/T) + 2 e^(r/T))) = log(1 + 2 e^((r - 0.8)/T))
# dense: s0 matches j1 (see above), positive s0.j1 = 0.8, negatives s0.(1,0) = 1, s0.(0,1) = 0
#   loss = log(1 + e^((1 - 0.8)/T) + e^((0 - 0.8)/T)) = log(1 + e + e^-4); s1 matches j0,
#   positive 0.8, negatives 0 and 1: the same value. loss_dense = log(1 + e + e^-4)
# weighted with loss_lambda = 0.25: 0.75 * loss_single, 0.25 * loss_dense
R = 1 / math.sqrt(2)
HAND_SINGLE = math.log(1 + 2 * math.exp((R - 0.8) / 0.2))
HAND_DENSE = math.log(1 + math.e + math.exp(-4))


def test_densecl_losses_match_hand_computation() -> None:
    model = stub_densecl([[1.0, 0.0], [0.0, 1.0]], loss_lambda=0.25)
    im_q = image((1.0, 0.0), (0.0, 1.0)).requires_grad_(True)
    im_k = image((0.6, 0.8), (0.8, -0.6))
    losses = model([im_q, im_k], mode="train", idx=torch.tensor([0]))
    assert set(losses) == {"loss_single", "loss_dense"}
    assert losses["loss_single"].item() == pytest.approx(0.75 * HAND_SINGLE, rel=1e-6)
    assert losses["loss_dense"].item() == pytest.approx(0.25 * HAND_DENSE, rel=1e-6)
    # both queues: column 0 replaced by the key (7, 1)/sqrt(50), pointer at 1
    k = [7 / math.sqrt(50), 1 / math.sqrt(50)]
    for queue, ptr in ((model.queue, model.queue_ptr), (model.queue2, model.queue2_ptr)):
        assert queue.t().tolist() == [pytest.approx(k), [0.0, 1.0]]
        assert ptr.tolist() == [1]
    (losses["loss_single"] + losses["loss_dense"]).backward()
    assert im_q.grad is not None and torch.isfinite(im_q.grad).all()


def plain_densecl(q_img: list, k_img: list, queue: list[list[float]], temperature: float) -> tuple[float, float]:
    """Unweighted global and dense losses of the stand-in model with loops and math only.
    ``q_img[n][s]``/``k_img[n][s]`` are the C-vectors of sample n at location s."""
    def unit(v: list[float]) -> list[float]:
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    def dot(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b))

    def mean(vs: list[list[float]]) -> list[float]:
        return [sum(col) / len(vs) for col in zip(*vs)]

    def ce(pos: float, negs: list[float]) -> float:
        logits = [pos / temperature] + [n / temperature for n in negs]
        return -logits[0] + math.log(sum(math.exp(z) for z in logits))

    columns = [list(c) for c in zip(*queue)]
    single, dense, count = 0.0, 0.0, 0
    for q_locs, k_locs in zip(q_img, k_img):
        q, k = unit(mean(q_locs)), unit(mean(k_locs))
        single += ce(dot(q, k), [dot(q, c) for c in columns])
        qs, ks = [unit(v) for v in q_locs], [unit(v) for v in k_locs]
        for qv in qs:
            match = max(range(len(ks)), key=lambda j: dot(qv, ks[j]))
            dense += ce(dot(qv, ks[match]), [dot(qv, c) for c in columns])
            count += 1
    return single / len(q_img), dense / count


def test_densecl_losses_match_plain_python() -> None:
    gen = torch.Generator().manual_seed(3)
    n, c, h, w, k = 3, 4, 2, 3, 5
    queue = F.normalize(torch.randn(c, k, generator=gen, dtype=torch.float64), dim=0)
    im_q = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    im_k = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    model = stub_densecl(queue.tolist(), loss_lambda=0.5, temperature=0.3, dtype=torch.float64)
    losses = model([im_q, im_k], mode="train")
    as_locations = lambda x: x.flatten(2).transpose(1, 2).tolist()  # noqa: E731 - (N, S, C) lists
    single, dense = plain_densecl(as_locations(im_q), as_locations(im_k), queue.tolist(), 0.3)
    assert losses["loss_single"].item() == pytest.approx(0.5 * single, rel=1e-10)
    assert losses["loss_dense"].item() == pytest.approx(0.5 * dense, rel=1e-10)


# -- queues -------------------------------------------------------------------------------------
def test_queues_wrap_around_and_survive_a_checkpoint_round_trip() -> None:
    torch.manual_seed(0)
    model = stub_densecl(F.normalize(torch.randn(2, 5), dim=0).tolist())
    before = model.queue.clone()
    batches = [(torch.randn(2, 2, 1, 3), torch.randn(2, 2, 1, 3)) for _ in range(3)]
    keys = []
    for im_q, im_k in batches:
        model([im_q, im_k], mode="train")
        keys.append(F.normalize(im_k.flatten(2).mean(2), dim=1))
    # 3 batches of 2 into 5 columns: columns 0,1 then 2,3 then 4,0; the pointer ends at 1
    expected = before.clone()
    for (first, second), key in zip(((0, 1), (2, 3), (4, 0)), keys):
        expected[:, first], expected[:, second] = key[0], key[1]
    assert torch.allclose(model.queue, expected)
    assert torch.allclose(model.queue2, expected)  # the stand-in's pooled dense key equals the global one
    assert model.queue_ptr.tolist() == [1] and model.queue2_ptr.tolist() == [1]

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = stub_densecl([[0.0] * 5, [1.0] * 5])
    fresh.load_state_dict(state)
    for name in ("queue", "queue_ptr", "queue2", "queue2_ptr"):
        assert torch.equal(getattr(fresh, name), getattr(model, name)), name


# -- momentum encoder ------------------------------------------------------------------------------
class ConvBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.bn(self.conv(x)).relu(),)


def small_densecl(momentum: float = 0.9) -> DenseCL:
    torch.manual_seed(0)
    return DenseCL(ConvBackbone(), DenseCLNeck(4, 8, 4), ContrastiveHead(0.2), queue_len=8, feat_dim=4,
                   momentum=momentum)


def test_momentum_encoder_starts_as_a_copy_gets_no_gradient_and_follows_the_ema_rule() -> None:
    model = small_densecl(momentum=0.9)
    online = list(model.backbone.parameters()) + list(model.neck.parameters())
    target = list(model.encoder_k.parameters())
    assert len(online) == len(target)
    assert all(torch.equal(o, t) for o, t in zip(online, target))
    assert not any(t.requires_grad for t in target)
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"backbone", "neck"}

    with torch.no_grad():  # as an optimizer step would: the query encoder moves away from the key encoder
        for p in online:
            p.add_(torch.randn_like(p))
    old_target = [t.clone() for t in target]
    views = [torch.randn(4, 1, 6, 6), torch.randn(4, 1, 6, 6)]
    losses = model(views, mode="train")
    for o, t, old in zip(online, target, old_target):
        assert torch.allclose(t, 0.9 * old + 0.1 * o.detach(), atol=1e-6)
    (losses["loss_single"] + losses["loss_dense"]).backward()
    assert all(t.grad is None for t in target)
    assert all(o.grad is not None for o in model.backbone.parameters())

    model.init_weights()  # a re-initialisation: the key encoder follows the query encoder again
    assert all(torch.equal(o, t) for o, t in zip(online, target))


# -- the warm-up hook ---------------------------------------------------------------------------
def test_densecl_hook_warm_up_and_state() -> None:
    model = small_densecl()
    hook = DenseCLHook(start_iters=3)
    runner = SimpleNamespace(model=model, iter=0)
    hook.selfsup_before_run(runner)
    seen = []
    for i in range(5):
        runner.iter = i
        hook.selfsup_before_iter(runner)
        seen.append(model.loss_lambda)
    assert seen == [0.0, 0.0, 0.0, 0.5, 0.5]

    # a resumed run inside the warm-up: the configured value comes back from the state
    runner.iter = 1
    hook.selfsup_before_iter(runner)
    state = hook.state_dict()
    resumed = DenseCLHook(start_iters=3)
    resumed.load_state_dict(state)
    resumed.selfsup_before_run(runner)  # the model's loss_lambda is 0.0 now
    runner.iter = 3
    resumed.selfsup_before_iter(runner)
    assert model.loss_lambda == 0.5


def test_densecl_hook_errors() -> None:
    with pytest.raises(ValueError, match="start_iters must be an integer >= 0"):
        DenseCLHook(start_iters=-1)
    with pytest.raises(SelfSupError, match="has no loss_lambda; remove the DenseCLHook"):
        DenseCLHook().selfsup_before_run(SimpleNamespace(model=nn.Linear(1, 1)))


# -- errors and config validation ---------------------------------------------------------------
def test_densecl_errors() -> None:
    with pytest.raises(ValueError, match="queue_len must be a positive integer"):
        DenseCL(MapBackbone(), MeanNeck(), ContrastiveHead(), queue_len=0)
    with pytest.raises(ValueError, match="loss_lambda must be in"):
        DenseCL(MapBackbone(), MeanNeck(), ContrastiveHead(), loss_lambda=1.5)
    model = stub_densecl([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="expects 2 views"):
        model([torch.ones(1, 2, 1, 2)] * 3, mode="train")
    with pytest.raises(ValueError, match="does not fit queue_len = 2"):
        model([torch.ones(3, 2, 1, 2)] * 2, mode="train")


def test_densecl_and_hook_validated_from_config() -> None:
    assert_validated_from_config("algorithms", "DenseCL")
    assert_validated_from_config("hooks", "DenseCLHook")


# -- end to end ------------------------------------------------------------------------------
def test_densecl_one_epoch_through_selfsup_run(tmp_path: Path) -> None:
    """The shipped Fashion-MNIST config for one epoch on 256 real images (narrow ResNet-18,
    batch 32, 8 iterations), the dense term off for the first iteration only (DenseCLHook
    ``start_iters = 1``).

    The queue holds one batch (32 keys), so from the second iteration on every negative is a
    real key; the loss falls from there: the last three iterations' mean below that of
    iterations 2-4.
    """
    from selfsup_data.testing import fashion_mnist_npz

    fashion_mnist_npz(tmp_path / "fm.npz", 256)
    source = {"type": "NumpyArrays", "file": str(tmp_path / "fm.npz")}
    config = derive_config(
        FASHION, tmp_path / "densecl.toml",
        replace={"data.train.data_source": source, "evaluation.train.data_source": source,
                 "evaluation.test.data_source": source},
        values={"runner.max_epochs": 1, "data.samples_per_gpu": 32, "data.workers_per_gpu": 0,
                "log_config.interval": 1, "evaluation.interval": 0, "model.backbone.base_channels": 8,
                "model.backbone.stem_channels": 8, "model.neck.in_channels": 64, "model.neck.hid_channels": 64,
                "model.queue_len": 32})
    work_dir = tmp_path / "work"
    result = run_selfsup(config, "--work-dir", work_dir, "--device", "cpu", "--cfg-options", "hooks.0.start_iters=1")
    assert result.returncode == 0, result.stderr
    assert (work_dir / "latest.pth").exists()
    records = read_metrics(work_dir, "train")
    losses = [r["loss"] for r in records]
    assert len(losses) == 8
    assert records[0]["loss_dense"] == 0 and all(r["loss_dense"] > 0 for r in records[1:])  # the warm-up
    assert sum(losses[-3:]) / 3 < sum(losses[1:4]) / 3, losses
    state = torch.load(work_dir / "latest.pth", weights_only=True, map_location="cpu")["state_dict"]
    assert state["queue_ptr"].tolist() == [0] and state["queue2_ptr"].tolist() == [0]  # 8 x 32 keys into 32 columns
    assert torch.allclose(state["queue"].norm(dim=0), torch.ones(32), atol=1e-5)
