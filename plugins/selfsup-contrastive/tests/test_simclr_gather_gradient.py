"""SimCLR's ``gather_gradient`` on two CPU processes (gloo): ``"global"`` gives one process's
gradient on the whole batch; ``"mmselfsup"`` gives MMSelfSup 0.x's, computed here by hand the
way 0.x does it (every process builds the full ``2N_total`` similarity matrix over
``GatherLayer``'s output, whose backward keeps only the process's own slice, and DDP
averages): half of the global gradient with 2 processes. The loss is the same in both."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from selfsup_core.testing import run_ranks

WORKER = Path(__file__).with_name("dist_worker_simclr_gather.py")
TEMPERATURE = 0.5


def _data() -> dict[str, torch.Tensor]:
    spec = importlib.util.spec_from_file_location("selfsup_contrastive_tests_simclr_gather", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.full_data()


def _mmselfsup_loss(z: torch.Tensor) -> torch.Tensor:
    """0.x's SimCLR loss on the gathered, interleaved ``(2N, D)`` embeddings (rows 2k and
    2k+1 are the two views of image k): cross-entropy of the partner against every other row."""
    z = z / (torch.norm(z, p=2, dim=1, keepdim=True) + 1e-10)
    s = z @ z.T / TEMPERATURE
    n2 = z.size(0)
    s = s.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    partner = torch.arange(n2) ^ 1
    return F.cross_entropy(s, partner)


def _mmselfsup_gradient(data: dict[str, torch.Tensor], world_size: int = 2, per_rank: int = 2):
    grads, losses = [], []
    for rank in range(world_size):
        weight = data["weight"].clone().requires_grad_(True)
        parts = []
        for q in range(world_size):
            rows = slice(q * per_rank, (q + 1) * per_rank)
            # 0.x stacks the two views image by image: (v1[0], v2[0], v1[1], v2[1], ...)
            x = torch.stack((data["view_1"][rows], data["view_2"][rows]), 1).reshape(-1, 3)
            zq = x @ weight.T
            parts.append(zq if q == rank else zq.detach())  # GatherLayer: own slice's gradient only
        loss = _mmselfsup_loss(torch.cat(parts))
        loss.backward()
        grads.append(weight.grad)
        losses.append(loss.detach())
    return torch.stack(losses).mean(), torch.stack(grads).mean(0)   # DDP averages


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist")
    run_ranks(WORKER, out, timeout=120)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_mmselfsup_gather_gradient_is_0x_and_global_is_the_whole_batch_gradient(ranks) -> None:
    data = _data()
    want_loss, want_grad = _mmselfsup_gradient(data)
    weight = data["weight"].clone().requires_grad_(True)
    x = torch.stack((data["view_1"], data["view_2"]), 1).reshape(-1, 3)
    whole = _mmselfsup_loss(x @ weight.T)               # one process, the whole batch
    whole.backward()
    torch.testing.assert_close(want_grad, weight.grad / 2)  # 0.x's is 1/W of the global one
    for result in ranks:
        torch.testing.assert_close(result["mmselfsup_loss"], want_loss)
        torch.testing.assert_close(result["global_loss"], whole.detach())
        torch.testing.assert_close(result["mmselfsup_grad"], want_grad)
        torch.testing.assert_close(result["global_grad"], weight.grad)


def test_bad_gather_gradient_is_refused() -> None:
    from selfsup_contrastive.simclr import SimCLR
    from selfsup_models.heads import ContrastiveHead
    from torch import nn

    with pytest.raises(ValueError, match="gather_gradient"):
        SimCLR(nn.Identity(), nn.Identity(), ContrastiveHead(), gather_gradient="exact")
