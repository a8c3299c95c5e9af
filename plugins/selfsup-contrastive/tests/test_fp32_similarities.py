"""Under bf16 autocast the contrastive similarities stay float32: MoCo's queue logits, SimCLR's
NT-Xent logits and the MoCo v3 head give the float32 results, not bf16-rounded ones."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from selfsup_models.heads import MoCoV3Head
from torch import nn

from selfsup_contrastive.moco import moco_logits
from selfsup_contrastive.simclr import nt_xent_logits


class FirstOfList(nn.Module):
    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x[0]]


def bf16_exact(*shape: int, seed: int) -> torch.Tensor:
    """Unit rows whose entries are exact in bf16, so that only the products could be rounded;
    around a common direction, so that similarities are near 1, as trained positives are."""
    rows = F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) + 2.0, dim=-1)
    return rows.to(torch.bfloat16).float()


def autocast_bf16() -> torch.autocast:
    return torch.autocast(device_type="cpu", dtype=torch.bfloat16)


def test_bf16_products_would_be_visibly_rounded() -> None:
    q, queue = bf16_exact(64, 128, seed=0), bf16_exact(512, 128, seed=1).t()
    with autocast_bf16():
        rounded = q @ queue
    assert rounded.dtype == torch.bfloat16
    assert (rounded.float() - q @ queue).abs().max() > 1e-3


def test_moco_logits_are_float32_under_autocast() -> None:
    q, k, queue = bf16_exact(64, 128, seed=0), bf16_exact(64, 128, seed=2), bf16_exact(512, 128, seed=1).t()
    expected = moco_logits(q, k, queue)
    with autocast_bf16():
        got = moco_logits(q.to(torch.bfloat16), k.to(torch.bfloat16), queue)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_nt_xent_logits_are_float32_under_autocast() -> None:
    z = bf16_exact(64, 128, seed=3)
    expected = nt_xent_logits(z, z)
    with autocast_bf16():
        got = nt_xent_logits(z.to(torch.bfloat16), z.to(torch.bfloat16))
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_mocov3_head_loss_is_the_float32_loss_under_autocast() -> None:
    head = MoCoV3Head(FirstOfList(), temperature=0.2)
    q, k = bf16_exact(64, 128, seed=4), bf16_exact(64, 128, seed=5)
    expected = head(q, k)["loss"]
    with autocast_bf16():
        got = head(q.to(torch.bfloat16), k.to(torch.bfloat16))["loss"]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
