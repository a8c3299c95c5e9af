"""FineTune: layer-wise lr decay groups (by hand), a copy is trained (the model is untouched),
a learnable toy task is learned, argument errors."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from selfsup_eval.evaluation import EvalContext
from selfsup_core.testing import assert_validated_from_config
from selfsup_eval.finetune import FineTune
from selfsup_models.backbones.vision_transformer import VisionTransformer

ARCH = {"embed_dims": 16, "num_layers": 2, "num_heads": 2, "feedforward_channels": 32}


class TinyViTAlgo(nn.Module):
    """An algorithm stand-in: a ViT backbone, a pre-training head the fine-tuning must ignore."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = VisionTransformer(arch=ARCH, img_size=8, patch_size=4, in_channels=1)
        self.head = nn.Linear(16, 4)

    def forward(self, img: torch.Tensor, mode: str = "train") -> Any:
        return self.backbone(img)


class Patterns(Dataset):
    """8x8 grey images of one of 4 stripe patterns (horizontal, vertical, checkerboard,
    diagonal) with random amplitude and noise; label = the pattern."""

    def __init__(self, count: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        patterns = torch.stack([rows % 2, cols % 2, (rows + cols) % 2, ((rows - cols) % 4 == 0).long()]).float()
        self.labels = torch.randint(0, 4, (count,), generator=g)
        amplitude = 1.0 + torch.rand(count, 1, 1, 1, generator=g)
        noise = torch.randn(count, 1, 8, 8, generator=g) * 0.3
        self.images = patterns[self.labels].unsqueeze(1) * amplitude + noise
        self.gt_labels = self.labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"img": self.images[i], "label": int(self.labels[i]), "idx": i}


def context(model: nn.Module, messages: list[str] | None = None) -> EvalContext:
    train, test = Patterns(128, 0), Patterns(64, 1)
    return EvalContext(model=model, datasets={"train": lambda: train, "test": lambda: test}, samples_per_gpu=64,
                       workers_per_gpu=0, seed=0, message=(messages if messages is not None else []).append)


def test_layer_wise_lr_decay_and_weight_decay_by_hand():
    torch.manual_seed(0)
    evaluator = FineTune(layer_decay_rate=0.5, weight_decay=0.05)
    net = evaluator.build_net(TinyViTAlgo(), 16, 4, torch.Generator().manual_seed(0))
    optimizer = evaluator.build_optimizer(net, lr=1.0)
    group_of = {}
    names = {id(p): n for n, p in net.trainable().named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            group_of[names[id(p)]] = group
    # 2 blocks: scale = 0.5 ** (num_layers + 1 - layer_id)
    expected_lr = {
        "backbone.patch_embed.proj.weight": 0.5 ** 3,   # layer 0
        "backbone.cls_token": 0.5 ** 3,
        "backbone.pos_embed": 0.5 ** 3,
        "backbone.blocks.0.attn.qkv.weight": 0.5 ** 2,  # layer 1
        "backbone.blocks.1.mlp.fc1.weight": 0.5 ** 1,   # layer 2
        "backbone.norm.weight": 1.0,                    # layer 3 = num_layers + 1
        "head.weight": 1.0,
        "norm.weight": 1.0,
    }
    for name, lr in expected_lr.items():
        assert group_of[name]["lr"] == pytest.approx(lr), name
    for name in ("backbone.blocks.0.attn.qkv.weight", "backbone.patch_embed.proj.weight", "head.weight"):
        assert group_of[name]["weight_decay"] == pytest.approx(0.05), name
    for name in ("backbone.cls_token", "backbone.pos_embed", "backbone.blocks.0.norm1.weight", "head.bias",
                 "backbone.blocks.1.mlp.fc1.bias", "norm.weight"):
        assert group_of[name]["weight_decay"] == 0.0, name
    # the pre-training head of the algorithm is not fine-tuned
    assert not any(n.startswith("model.head") for n in group_of)


def test_fine_tunes_a_copy_and_learns_the_task():
    torch.manual_seed(0)
    model = TinyViTAlgo()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    messages: list[str] = []
    evaluator = FineTune(lr=4e-2, epochs=6, warmup_epochs=1, batch_size=32, layer_decay_rate=0.75,
                         label_smoothing=0.0)
    result = evaluator.evaluate(context(model, messages))
    assert set(result) == {"finetune_top1", "finetune_top5", "finetune_train_loss"}
    assert result["finetune_top1"] >= 0.9, (result, messages)
    assert result["finetune_top5"] == 1.0           # 4 classes: top-5 is top-4
    for key, value in model.state_dict().items():   # the evaluated model is left as it was
        assert torch.equal(value, before[key]), key
    assert any("layer decay 0.75" in m for m in messages)


def test_without_layer_decay_every_group_has_the_base_lr():
    evaluator = FineTune(layer_decay_rate=None)
    net = evaluator.build_net(TinyViTAlgo(), 16, 4, torch.Generator().manual_seed(0))
    assert {g["lr"] for g in evaluator.build_optimizer(net, lr=0.1).param_groups} == {0.1}


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warmup_epochs": 5, "epochs": 5}, "warmup_epochs must be < epochs"),
    ({"layer_decay_rate": 0.0}, "layer_decay_rate must be a number in"),
    ({"norm": "GN"}, "norm must be one of"),
    ({"betas": [0.9]}, "betas must be two numbers"),
    ({"lr": 0}, "lr must be a number in"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FineTune(**kwargs)


def test_core_validates_its_keys():
    assert_validated_from_config("evaluators", "FineTune")
